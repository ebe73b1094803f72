//! Association negotiation on the acceptor side (PS3.8 §7.1, PS3.7 annex D): decide from an
//! A-ASSOCIATE-RQ whether to accept, and with which presentation contexts and transfer
//! syntaxes.

use crate::dicom::sop_class;
use crate::dicom::transfer_syntax::{self, TransferSyntax};
use crate::ul::pdu::{
    AssociateAc, AssociateRj, AssociateRq, PresentationContextAc, PresentationContextResult, RoleSelection,
    UserInformation, DICOM_APPLICATION_CONTEXT,
};

/// A-ASSOCIATE-RJ result (PS3.8 table 9-21).
pub const REJECTED_PERMANENT: u8 = 1;
pub const REJECTED_TRANSIENT: u8 = 2;
/// A-ASSOCIATE-RJ source.
pub const SOURCE_SERVICE_USER: u8 = 1;
pub const SOURCE_SERVICE_PROVIDER_ACSE: u8 = 2;
pub const SOURCE_SERVICE_PROVIDER_PRESENTATION: u8 = 3;
/// Reasons, by source.
pub const REASON_APPLICATION_CONTEXT_NOT_SUPPORTED: u8 = 2;
pub const REASON_CALLING_AE_NOT_RECOGNIZED: u8 = 3;
pub const REASON_CALLED_AE_NOT_RECOGNIZED: u8 = 7;
pub const REASON_PROTOCOL_VERSION_NOT_SUPPORTED: u8 = 2;
pub const REASON_LOCAL_LIMIT_EXCEEDED: u8 = 2;

/// What the acceptor accepts.
#[derive(Debug, Clone)]
pub struct AcceptorPolicy {
    pub ae_title: String,
    /// Reject a request whose called AE title is not ours.
    pub enforce_called_ae_title: bool,
    /// Calling AE titles allowed to associate; empty = anyone.
    pub allowed_calling_ae_titles: Vec<String>,
    /// Accept any abstract syntax, not only Storage SOP Classes and Verification.
    pub promiscuous: bool,
    /// Accept only native (uncompressed) transfer syntaxes.
    pub uncompressed_only: bool,
    /// The maximum length sub-item we announce: the largest P-DATA-TF we want to receive.
    pub max_pdu_length: u32,
    pub implementation_class_uid: String,
    pub implementation_version_name: String,
}

/// An accepted presentation context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedContext {
    pub abstract_syntax: String,
    pub transfer_syntax: &'static TransferSyntax,
}

/// The outcome of an accepted negotiation.
#[derive(Debug, Clone)]
pub struct Association {
    pub calling_ae_title: String,
    pub called_ae_title: String,
    /// The largest P-DATA-TF the peer accepts from us; 0 = no limit (PS3.8 §D.1).
    pub peer_max_pdu_length: u32,
    /// Accepted contexts by context ID (IDs are odd, 1..=255: PS3.8 §9.3.2.2).
    contexts: Vec<Option<AcceptedContext>>,
    pub accept: AssociateAc,
}

impl Association {
    pub fn context(&self, id: u8) -> Option<&AcceptedContext> {
        self.contexts.get(id as usize).and_then(Option::as_ref)
    }
}

/// Decides on a request: accept (with per-context results) or reject with the PS3.8 reason.
pub fn negotiate(rq: &AssociateRq, policy: &AcceptorPolicy) -> Result<Association, AssociateRj> {
    check_request(rq, policy)?;
    let mut contexts: Vec<Option<AcceptedContext>> = vec![None; 256];
    let mut results = Vec::with_capacity(rq.presentation_contexts.len());
    for pc in &rq.presentation_contexts {
        let (result, transfer_syntax) = if contexts[pc.id as usize].is_some() {
            // A context ID used twice: the first one stands (PS3.8 §9.3.2.2: IDs are unique).
            (PresentationContextResult::NoReason, None)
        } else {
            decide_context(&pc.abstract_syntax, &pc.transfer_syntaxes, policy)
        };
        if let Some(ts) = transfer_syntax {
            contexts[pc.id as usize] =
                Some(AcceptedContext { abstract_syntax: pc.abstract_syntax.clone(), transfer_syntax: ts });
        }
        results.push(PresentationContextAc {
            id: pc.id,
            result,
            transfer_syntax: transfer_syntax
                .map(|ts| ts.uid.to_string())
                .or_else(|| pc.transfer_syntaxes.first().cloned())
                .unwrap_or_else(|| transfer_syntax::IMPLICIT_VR_LITTLE_ENDIAN.to_string()),
        });
    }
    let accept = AssociateAc {
        protocol_version: 1,
        called_ae_title: rq.called_ae_title.clone(),
        calling_ae_title: rq.calling_ae_title.clone(),
        application_context: DICOM_APPLICATION_CONTEXT.to_string(),
        presentation_contexts: results,
        user_information: user_information_reply(&rq.user_information, policy),
    };
    Ok(Association {
        calling_ae_title: rq.calling_ae_title.clone(),
        called_ae_title: rq.called_ae_title.clone(),
        peer_max_pdu_length: rq.user_information.max_pdu_length.unwrap_or(0),
        contexts,
        accept,
    })
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
    format!("{why} (A-ASSOCIATE-RJ result {}, source {}, reason {})", rj.result, rj.source, rj.reason)
}

/// Result and transfer syntax for one proposed presentation context (PS3.8 table 9-18).
fn decide_context(
    abstract_syntax: &str,
    proposed: &[String],
    policy: &AcceptorPolicy,
) -> (PresentationContextResult, Option<&'static TransferSyntax>) {
    let supported = abstract_syntax == sop_class::VERIFICATION
        || sop_class::is_storage(abstract_syntax)
        || (policy.promiscuous && !abstract_syntax.is_empty());
    if !supported {
        return (PresentationContextResult::AbstractSyntaxNotSupported, None);
    }
    let best = proposed
        .iter()
        .filter_map(|uid| transfer_syntax::lookup(uid))
        .filter(|ts| !(policy.uncompressed_only && ts.encapsulated))
        .min_by_key(|ts| transfer_syntax::preference(ts.uid));
    match best {
        Some(ts) => (PresentationContextResult::Acceptance, Some(ts)),
        None => (PresentationContextResult::TransferSyntaxesNotSupported, None),
    }
}

/// Our user information item: our receive limit and identity, and the replies PS3.7 annex D
/// asks for to what the requestor proposed.
fn user_information_reply(proposed: &UserInformation, policy: &AcceptorPolicy) -> UserInformation {
    UserInformation {
        max_pdu_length: Some(policy.max_pdu_length),
        implementation_class_uid: Some(policy.implementation_class_uid.clone()),
        implementation_version_name: Some(policy.implementation_version_name.clone()),
        // We perform operations one at a time (PS3.7 D.3.3.3): answer 1/1 when asked.
        async_ops_window: proposed.async_ops_window.map(|_| (1, 1)),
        // The requestor may be SCU of what it proposed; we never act as SCU toward it on this
        // association, so it may not be SCP (PS3.7 D.3.3.4).
        role_selections: proposed
            .role_selections
            .iter()
            .map(|r| RoleSelection { sop_class_uid: r.sop_class_uid.clone(), scu_role: r.scu_role, scp_role: false })
            .collect(),
        // We do not authenticate users, so we send no server response (PS3.7 D.3.3.7.2).
        user_identity: None,
        user_identity_response: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ul::pdu::PresentationContextRq;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

    fn policy() -> AcceptorPolicy {
        AcceptorPolicy {
            ae_title: "OXIDIP".into(),
            enforce_called_ae_title: false,
            allowed_calling_ae_titles: vec![],
            promiscuous: false,
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
        let assoc = negotiate(&rq, &policy()).unwrap();
        let results: Vec<_> = assoc.accept.presentation_contexts.iter().map(|c| (c.id, c.result)).collect();
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
        assert!(assoc.context(3).is_none());
        assert_eq!(assoc.peer_max_pdu_length, 16384);
        assert_eq!(assoc.accept.user_information.max_pdu_length, Some(65536));
    }

    #[test]
    fn uncompressed_only_and_promiscuous() {
        let rq = request(&[(1, CT, &["1.2.840.10008.1.2.4.50"]), (3, "1.2.3.4.5.6", &["1.2.840.10008.1.2"])]);
        let strict = AcceptorPolicy { uncompressed_only: true, ..policy() };
        let assoc = negotiate(&rq, &strict).unwrap();
        assert_eq!(
            assoc.accept.presentation_contexts[0].result,
            PresentationContextResult::TransferSyntaxesNotSupported
        );
        let any = AcceptorPolicy { promiscuous: true, ..policy() };
        assert!(negotiate(&rq, &any).unwrap().context(3).is_some());
    }

    #[test]
    fn rejections_carry_the_ps38_source_and_reason() {
        let enforcing = AcceptorPolicy { enforce_called_ae_title: true, ..policy() };
        let mut rq = request(&[(1, CT, &["1.2.840.10008.1.2"])]);
        rq.called_ae_title = "SOMEONE".into();
        assert_eq!(negotiate(&rq, &enforcing).unwrap_err(), AssociateRj { result: 1, source: 1, reason: 7 });
        assert!(negotiate(&rq, &policy()).is_ok(), "not enforced: any called AE is fine");

        let listed = AcceptorPolicy { allowed_calling_ae_titles: vec!["PACS".into()], ..policy() };
        assert_eq!(negotiate(&rq, &listed).unwrap_err(), AssociateRj { result: 1, source: 1, reason: 3 });

        let mut old = request(&[]);
        old.protocol_version = 2;
        assert_eq!(negotiate(&old, &policy()).unwrap_err(), AssociateRj { result: 1, source: 2, reason: 2 });

        let mut foreign = request(&[]);
        foreign.application_context = "1.2.3".into();
        assert_eq!(negotiate(&foreign, &policy()).unwrap_err(), AssociateRj { result: 1, source: 1, reason: 2 });
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
        let rj = negotiate(&rq, &enforcing).unwrap_err();
        assert_eq!(
            rejection_reason(&rj, &rq, &enforcing),
            r#"called AE title "SOMEONE" not recognized (ours is "OXIDIP") (A-ASSOCIATE-RJ result 1, source 1, reason 7)"#
        );
        rq.called_ae_title = "OXIDIP".into();
        let rj = negotiate(&rq, &enforcing).unwrap_err();
        assert!(rejection_reason(&rj, &rq, &enforcing).starts_with(r#"calling AE title "STORESCU" not among"#));
    }

    #[test]
    fn replies_to_async_window_and_role_selection() {
        let mut rq = request(&[(1, CT, &["1.2.840.10008.1.2"])]);
        rq.user_information.async_ops_window = Some((16, 16));
        rq.user_information.role_selections =
            vec![RoleSelection { sop_class_uid: CT.into(), scu_role: true, scp_role: true }];
        let ui = negotiate(&rq, &policy()).unwrap().accept.user_information;
        assert_eq!(ui.async_ops_window, Some((1, 1)));
        assert_eq!(
            ui.role_selections,
            vec![RoleSelection { sop_class_uid: CT.into(), scu_role: true, scp_role: false }]
        );
    }

    #[test]
    fn duplicate_context_ids_keep_the_first() {
        let rq = request(&[(1, CT, &["1.2.840.10008.1.2"]), (1, sop_class::VERIFICATION, &["1.2.840.10008.1.2"])]);
        let assoc = negotiate(&rq, &policy()).unwrap();
        assert_eq!(assoc.context(1).unwrap().abstract_syntax, CT);
        assert_eq!(assoc.accept.presentation_contexts[1].result, PresentationContextResult::NoReason);
    }
}
