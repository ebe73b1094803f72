//! The acceptor's side of association negotiation (PS3.8 §7.1, PS3.7 annex D): decide from
//! an A-ASSOCIATE-RQ whether to accept, and with which presentation contexts, transfer
//! syntaxes and roles. What is supported, and in which role, is the caller's word
//! ([`SupportedSyntaxes`]).

use std::collections::HashMap;

use super::{AcceptedContext, Association, Roles};
use crate::dicom::transfer_syntax::{self, TransferSyntax};
use crate::ul::pdu::reject::*;
use crate::ul::pdu::{
    AssociateAc, AssociateRj, AssociateRq, PresentationContextAc, PresentationContextResult, RoleSelection,
    UserInformation, DICOM_APPLICATION_CONTEXT,
};

/// Which abstract syntaxes the acceptor's caller serves, and in which roles: SCP of what it
/// answers (a storage SOP class for a Storage SCP), SCU of what it may invoke toward the
/// requestor on the same association (storage, for a C-GET SCP, PS3.4 C.4.3).
pub trait SupportedSyntaxes {
    /// The roles we can play for `abstract_syntax`; None when it is not supported at all.
    fn roles(&self, abstract_syntax: &str) -> Option<Roles>;
}

impl<F: Fn(&str) -> Option<Roles>> SupportedSyntaxes for F {
    fn roles(&self, abstract_syntax: &str) -> Option<Roles> {
        self(abstract_syntax)
    }
}

/// Who may associate with the acceptor, and what it announces.
#[derive(Debug, Clone)]
pub struct AcceptorPolicy {
    pub ae_title: String,
    /// Reject a request whose called AE title is not ours.
    pub enforce_called_ae_title: bool,
    /// Calling AE titles allowed to associate; empty = anyone.
    pub allowed_calling_ae_titles: Vec<String>,
    /// Accept only native (uncompressed) transfer syntaxes.
    pub uncompressed_only: bool,
    /// The maximum length sub-item we announce: the largest P-DATA-TF we want to receive.
    pub max_pdu_length: u32,
    pub implementation_class_uid: String,
    pub implementation_version_name: String,
}

/// Decides on a request: accept (the association, and the A-ASSOCIATE-AC to send, with
/// per-context results) or reject with the PS3.8 reason.
pub fn negotiate(
    rq: &AssociateRq,
    policy: &AcceptorPolicy,
    supported: &impl SupportedSyntaxes,
) -> Result<(Association, AssociateAc), AssociateRj> {
    check_request(rq, policy)?;
    let proposed_roles = proposed_roles(&rq.user_information.role_selections);
    let peer_max_pdu_length = rq.user_information.max_pdu_length.unwrap_or(0);
    let mut association =
        Association::new(rq.calling_ae_title.clone(), rq.called_ae_title.clone(), peer_max_pdu_length);
    let mut results = Vec::with_capacity(rq.presentation_contexts.len());
    for pc in &rq.presentation_contexts {
        let decision = if association.context(pc.id).is_some() {
            // A context ID used twice: the first one stands (PS3.8 §9.3.2.2: IDs are unique).
            Err(PresentationContextResult::NoReason)
        } else {
            let proposed = proposed_roles.get(pc.abstract_syntax.as_str()).copied();
            decide_context(&pc.abstract_syntax, &pc.transfer_syntaxes, proposed, policy, supported)
        };
        let transfer_syntax = match decision {
            Ok((transfer_syntax, roles)) => {
                association.accept(AcceptedContext {
                    id: pc.id,
                    abstract_syntax: pc.abstract_syntax.clone(),
                    transfer_syntax,
                    roles,
                });
                transfer_syntax.uid.to_string()
            }
            // Not significant in a rejection (PS3.8 §9.3.3.2), but the sub-item is sent.
            Err(_) => pc
                .transfer_syntaxes
                .first()
                .cloned()
                .unwrap_or_else(|| transfer_syntax::IMPLICIT_VR_LITTLE_ENDIAN.into()),
        };
        let result = decision.map_or_else(|rejected| rejected, |_| PresentationContextResult::Acceptance);
        results.push(PresentationContextAc { id: pc.id, result, transfer_syntax });
    }
    let accept = AssociateAc {
        protocol_version: 1,
        called_ae_title: rq.called_ae_title.clone(),
        calling_ae_title: rq.calling_ae_title.clone(),
        application_context: DICOM_APPLICATION_CONTEXT.to_string(),
        presentation_contexts: results,
        user_information: user_information_reply(&rq.user_information, policy, supported),
    };
    Ok((association, accept))
}

/// The association-level checks, in the order PS3.8 §7.1.1.7 lists the rejection sources.
fn check_request(rq: &AssociateRq, policy: &AcceptorPolicy) -> Result<(), AssociateRj> {
    let reject = |source, reason| AssociateRj { result: REJECTED_PERMANENT, source, reason };
    // Protocol version: bit 0 = version 1, the only one defined (PS3.8 §9.3.2).
    if rq.protocol_version & 1 == 0 {
        return Err(reject(SOURCE_SERVICE_PROVIDER_ACSE, REASON_PROTOCOL_VERSION_NOT_SUPPORTED));
    }
    if rq.application_context != DICOM_APPLICATION_CONTEXT {
        return Err(reject(SOURCE_SERVICE_USER, REASON_APPLICATION_CONTEXT_NOT_SUPPORTED));
    }
    if policy.enforce_called_ae_title && rq.called_ae_title != policy.ae_title {
        return Err(reject(SOURCE_SERVICE_USER, REASON_CALLED_AE_NOT_RECOGNIZED));
    }
    if !policy.allowed_calling_ae_titles.is_empty() && !policy.allowed_calling_ae_titles.contains(&rq.calling_ae_title)
    {
        return Err(reject(SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNIZED));
    }
    Ok(())
}

/// Why a request was rejected, in words, for the log: what `check_request` found, with the
/// values involved and the A-ASSOCIATE-RJ fields sent (PS3.8 table 9-21).
pub fn rejection_reason(rj: &AssociateRj, rq: &AssociateRq, policy: &AcceptorPolicy) -> String {
    let why = match (rj.source, rj.reason) {
        (SOURCE_SERVICE_PROVIDER_ACSE, REASON_PROTOCOL_VERSION_NOT_SUPPORTED) => {
            format!("protocol version {:#06x} not supported", rq.protocol_version)
        }
        (SOURCE_SERVICE_USER, REASON_APPLICATION_CONTEXT_NOT_SUPPORTED) => {
            format!("application context name {:?} not supported", rq.application_context)
        }
        (SOURCE_SERVICE_USER, REASON_CALLED_AE_NOT_RECOGNIZED) => {
            format!("called AE title {:?} not recognized (ours is {:?})", rq.called_ae_title, policy.ae_title)
        }
        (SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNIZED) => {
            format!("calling AE title {:?} not among the allowed calling AE titles", rq.calling_ae_title)
        }
        _ => "rejected".to_string(),
    };
    format!("{why} ({rj})")
}

/// The requestor's role proposals by SOP class (PS3.7 D.3.3.4: one item per SOP class; a
/// repeated one is ignored), as the roles it proposes to play itself.
fn proposed_roles(items: &[RoleSelection]) -> HashMap<&str, Roles> {
    let mut roles = HashMap::with_capacity(items.len());
    for item in items {
        roles.entry(item.sop_class_uid.as_str()).or_insert(Roles { scu: item.scu_role, scp: item.scp_role });
    }
    roles
}

/// The roles the requestor gets (PS3.7 D.3.3.4): those it proposed that we can match, SCU
/// against our SCP and SCP against our SCU. Without a proposal, the defaults: the requestor
/// is SCU, we are SCP.
fn requestor_roles(proposed: Option<Roles>, ours: Roles) -> Roles {
    let proposed = proposed.unwrap_or(Roles::SCU);
    Roles { scu: proposed.scu && ours.scp, scp: proposed.scp && ours.scu }
}

/// Transfer syntax and our roles for one proposed presentation context, or why it is refused
/// (PS3.8 table 9-18).
fn decide_context(
    abstract_syntax: &str,
    proposed: &[String],
    proposed_roles: Option<Roles>,
    policy: &AcceptorPolicy,
    supported: &impl SupportedSyntaxes,
) -> Result<(&'static TransferSyntax, Roles), PresentationContextResult> {
    let ours = supported
        .roles(abstract_syntax)
        .filter(|roles| roles.any())
        .ok_or(PresentationContextResult::AbstractSyntaxNotSupported)?;
    let best = proposed
        .iter()
        .filter_map(|uid| transfer_syntax::lookup(uid))
        .filter(|ts| !(policy.uncompressed_only && ts.encapsulated))
        .min_by_key(|ts| transfer_syntax::preference(ts.uid))
        .ok_or(PresentationContextResult::TransferSyntaxesNotSupported)?;
    // The requestor's roles seen from our side: where it is SCU we are SCP, and the reverse.
    let theirs = requestor_roles(proposed_roles, ours);
    let roles = Roles { scu: theirs.scp, scp: theirs.scu };
    if !roles.any() {
        // Neither side could invoke anything on it (the requestor wants to be only SCP of
        // what we can only serve as SCP, say): refused, as pynetdicom does, rather than
        // accepted and useless.
        return Err(PresentationContextResult::UserRejection);
    }
    Ok((best, roles))
}

/// Our user information item: our receive limit and identity, and the replies PS3.7 annex D
/// asks for to what the requestor proposed.
fn user_information_reply(
    proposed: &UserInformation,
    policy: &AcceptorPolicy,
    supported: &impl SupportedSyntaxes,
) -> UserInformation {
    UserInformation {
        max_pdu_length: Some(policy.max_pdu_length),
        implementation_class_uid: Some(policy.implementation_class_uid.clone()),
        implementation_version_name: Some(policy.implementation_version_name.clone()),
        // We perform operations one at a time (PS3.7 D.3.3.3): answer 1/1 when asked.
        async_ops_window: proposed.async_ops_window.map(|_| (1, 1)),
        // One reply per item offered (PS3.7 D.3.3.4): each role accepted (1) when proposed and
        // matched by a role of ours, never 1 for a role not proposed.
        role_selections: proposed
            .role_selections
            .iter()
            .map(|item| {
                let ours = supported.roles(&item.sop_class_uid).unwrap_or(Roles::NEITHER);
                let granted = requestor_roles(Some(Roles { scu: item.scu_role, scp: item.scp_role }), ours);
                RoleSelection {
                    sop_class_uid: item.sop_class_uid.clone(),
                    scu_role: granted.scu,
                    scp_role: granted.scp,
                }
            })
            .collect(),
        // We do not authenticate users, so we send no server response (PS3.7 D.3.3.7.2).
        user_identity: None,
        user_identity_response: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::sop_class;
    use crate::ul::pdu::PresentationContextRq;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";

    /// A Storage SCP's word: Verification and the storage SOP classes, as SCP.
    fn storage_scp(abstract_syntax: &str) -> Option<Roles> {
        (abstract_syntax == sop_class::VERIFICATION || sop_class::is_storage(abstract_syntax)).then_some(Roles::SCP)
    }

    /// A C-GET SCP's: the retrieve model as SCP, storage as SCU (it sends the C-STOREs).
    fn get_scp(abstract_syntax: &str) -> Option<Roles> {
        match abstract_syntax {
            GET => Some(Roles::SCP),
            other if sop_class::is_storage(other) => Some(Roles::SCU),
            _ => None,
        }
    }

    fn negotiate_storage(rq: &AssociateRq, policy: &AcceptorPolicy) -> Result<(Association, AssociateAc), AssociateRj> {
        negotiate(rq, policy, &storage_scp)
    }

    fn policy() -> AcceptorPolicy {
        AcceptorPolicy {
            ae_title: "OXIDIP".into(),
            enforce_called_ae_title: false,
            allowed_calling_ae_titles: vec![],
            uncompressed_only: false,
            max_pdu_length: 65536,
            implementation_class_uid: "1.2.3".into(),
            implementation_version_name: "TEST".into(),
        }
    }

    fn request(contexts: &[(u8, &str, &[&str])]) -> AssociateRq {
        AssociateRq {
            protocol_version: 1,
            called_ae_title: "OXIDIP".into(),
            calling_ae_title: "STORESCU".into(),
            application_context: DICOM_APPLICATION_CONTEXT.into(),
            presentation_contexts: contexts
                .iter()
                .map(|(id, a, ts)| PresentationContextRq {
                    id: *id,
                    abstract_syntax: a.to_string(),
                    transfer_syntaxes: ts.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
            user_information: UserInformation { max_pdu_length: Some(16384), ..Default::default() },
        }
    }

    #[test]
    fn prefers_explicit_little_endian_and_rejects_per_context() {
        let rq = request(&[
            (1, CT, &["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"]),
            (3, "1.2.3.4.5.6", &["1.2.840.10008.1.2"]),
            (5, CT, &["1.2.9.9"]),
            (7, sop_class::VERIFICATION, &["1.2.840.10008.1.2"]),
        ]);
        let (assoc, accept) = negotiate_storage(&rq, &policy()).unwrap();
        let results: Vec<_> = accept.presentation_contexts.iter().map(|c| (c.id, c.result)).collect();
        assert_eq!(
            results,
            vec![
                (1, PresentationContextResult::Acceptance),
                (3, PresentationContextResult::AbstractSyntaxNotSupported),
                (5, PresentationContextResult::TransferSyntaxesNotSupported),
                (7, PresentationContextResult::Acceptance),
            ]
        );
        assert_eq!(assoc.context(1).unwrap().transfer_syntax.uid, "1.2.840.10008.1.2.1");
        assert_eq!(assoc.context(1).unwrap().roles, Roles::SCP);
        assert!(assoc.context(3).is_none());
        assert_eq!(assoc.peer_max_pdu_length, 16384);
        assert_eq!(accept.user_information.max_pdu_length, Some(65536));
    }

    #[test]
    fn uncompressed_only_and_what_the_caller_supports() {
        let rq = request(&[(1, CT, &["1.2.840.10008.1.2.4.50"]), (3, "1.2.3.4.5.6", &["1.2.840.10008.1.2"])]);
        let strict = AcceptorPolicy { uncompressed_only: true, ..policy() };
        let (_, accept) = negotiate_storage(&rq, &strict).unwrap();
        assert_eq!(accept.presentation_contexts[0].result, PresentationContextResult::TransferSyntaxesNotSupported);
        // A caller that serves anything (the server's promiscuous mode).
        let (assoc, _) = negotiate(&rq, &policy(), &|_: &str| Some(Roles::SCP)).unwrap();
        assert!(assoc.context(3).is_some());
    }

    #[test]
    fn rejections_carry_the_ps38_source_and_reason() {
        let enforcing = AcceptorPolicy { enforce_called_ae_title: true, ..policy() };
        let mut rq = request(&[(1, CT, &["1.2.840.10008.1.2"])]);
        rq.called_ae_title = "SOMEONE".into();
        assert_eq!(negotiate_storage(&rq, &enforcing).unwrap_err(), AssociateRj { result: 1, source: 1, reason: 7 });
        assert!(negotiate_storage(&rq, &policy()).is_ok(), "not enforced: any called AE is fine");

        let listed = AcceptorPolicy { allowed_calling_ae_titles: vec!["PACS".into()], ..policy() };
        assert_eq!(negotiate_storage(&rq, &listed).unwrap_err(), AssociateRj { result: 1, source: 1, reason: 3 });

        let mut old = request(&[]);
        old.protocol_version = 2;
        assert_eq!(negotiate_storage(&old, &policy()).unwrap_err(), AssociateRj { result: 1, source: 2, reason: 2 });

        let mut foreign = request(&[]);
        foreign.application_context = "1.2.3".into();
        assert_eq!(
            negotiate_storage(&foreign, &policy()).unwrap_err(),
            AssociateRj { result: 1, source: 1, reason: 2 }
        );
    }

    #[test]
    fn rejections_are_explained_with_the_values_involved() {
        let enforcing = AcceptorPolicy {
            enforce_called_ae_title: true,
            allowed_calling_ae_titles: vec!["PACS".into()],
            ..policy()
        };
        let mut rq = request(&[]);
        rq.called_ae_title = "SOMEONE".into();
        let rj = negotiate_storage(&rq, &enforcing).unwrap_err();
        assert_eq!(
            rejection_reason(&rj, &rq, &enforcing),
            r#"called AE title "SOMEONE" not recognized (ours is "OXIDIP") (A-ASSOCIATE-RJ result 1, source 1, reason 7)"#
        );
        rq.called_ae_title = "OXIDIP".into();
        let rj = negotiate_storage(&rq, &enforcing).unwrap_err();
        assert!(rejection_reason(&rj, &rq, &enforcing).starts_with(r#"calling AE title "STORESCU" not among"#));
    }

    #[test]
    fn replies_to_async_window_and_role_selection() {
        let mut rq = request(&[(1, CT, &["1.2.840.10008.1.2"])]);
        rq.user_information.async_ops_window = Some((16, 16));
        rq.user_information.role_selections = vec![
            RoleSelection { sop_class_uid: CT.into(), scu_role: true, scp_role: true },
            RoleSelection { sop_class_uid: "1.2.3.4".into(), scu_role: true, scp_role: false },
        ];
        let (assoc, accept) = negotiate_storage(&rq, &policy()).unwrap();
        assert_eq!(accept.user_information.async_ops_window, Some((1, 1)));
        // One reply per item: SCU granted where we are SCP; nothing for what we do not serve.
        assert_eq!(
            accept.user_information.role_selections,
            vec![
                RoleSelection { sop_class_uid: CT.into(), scu_role: true, scp_role: false },
                RoleSelection { sop_class_uid: "1.2.3.4".into(), scu_role: false, scp_role: false },
            ]
        );
        assert_eq!(assoc.context(1).unwrap().roles, Roles::SCP);
    }

    #[test]
    fn a_get_requestor_is_scp_of_storage_where_we_can_be_scu() {
        // PS3.7 D.3.3.4: the requestor proposes the SCP role for storage (it receives the
        // C-STOREs of its C-GET); a C-GET SCP accepts it and plays SCU there.
        let mut rq = request(&[(1, GET, &["1.2.840.10008.1.2"]), (3, CT, &["1.2.840.10008.1.2"])]);
        rq.user_information.role_selections =
            vec![RoleSelection { sop_class_uid: CT.into(), scu_role: false, scp_role: true }];
        let (assoc, accept) = negotiate(&rq, &policy(), &get_scp).unwrap();
        assert_eq!(assoc.context(1).unwrap().roles, Roles::SCP);
        assert_eq!(assoc.context(3).unwrap().roles, Roles::SCU);
        assert_eq!(
            accept.user_information.role_selections,
            vec![RoleSelection { sop_class_uid: CT.into(), scu_role: false, scp_role: true }]
        );
        // Without the role item the defaults stand (requestor SCU, we SCP), which a C-GET SCP
        // cannot play for storage: refused rather than accepted and useless.
        rq.user_information.role_selections.clear();
        let (assoc, accept) = negotiate(&rq, &policy(), &get_scp).unwrap();
        assert!(assoc.context(3).is_none());
        assert_eq!(accept.presentation_contexts[1].result, PresentationContextResult::UserRejection);
        // A Storage SCP asked to be SCU: the SCP role is turned down, and the context with it.
        rq.user_information.role_selections =
            vec![RoleSelection { sop_class_uid: CT.into(), scu_role: false, scp_role: true }];
        let (assoc, accept) = negotiate_storage(&rq, &policy()).unwrap();
        assert!(assoc.context(3).is_none());
        assert_eq!(
            accept.user_information.role_selections,
            vec![RoleSelection { sop_class_uid: CT.into(), scu_role: false, scp_role: false }]
        );
    }

    #[test]
    fn duplicate_context_ids_keep_the_first() {
        let rq = request(&[(1, CT, &["1.2.840.10008.1.2"]), (1, sop_class::VERIFICATION, &["1.2.840.10008.1.2"])]);
        let (assoc, accept) = negotiate_storage(&rq, &policy()).unwrap();
        assert_eq!(assoc.context(1).unwrap().abstract_syntax, CT);
        assert_eq!(accept.presentation_contexts[1].result, PresentationContextResult::NoReason);
    }
}
