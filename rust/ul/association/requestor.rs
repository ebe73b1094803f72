//! The requestor's side of association negotiation (PS3.8 §7.1, PS3.7 annex D): the
//! A-ASSOCIATE-RQ for what we propose, and the association the A-ASSOCIATE-AC leaves us.

use std::fmt;

use super::{AcceptedContext, Association, Roles};
use crate::dicom::transfer_syntax;
use crate::ul::pdu::{
    AssociateAc, AssociateRq, PresentationContextResult, PresentationContextRq, RoleSelection, UserInformation,
    DICOM_APPLICATION_CONTEXT,
};

/// Presentation contexts one A-ASSOCIATE-RQ can propose: IDs are odd, 1..=255 (PS3.8
/// §9.3.2.2).
pub const MAX_CONTEXTS: usize = 128;

/// One presentation context to propose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposedContext {
    pub abstract_syntax: String,
    /// In our order of preference; the acceptor picks one.
    pub transfer_syntaxes: Vec<String>,
    /// The roles we propose to play (PS3.7 D.3.3.4). `Roles::SCU` is the default and goes
    /// without a role selection item; SCP is what receiving C-STOREs on an association we
    /// requested takes (C-GET, PS3.4 C.4.3).
    pub roles: Roles,
}

impl ProposedContext {
    /// A context on which we only send requests: the default roles.
    pub fn scu(abstract_syntax: &str, transfer_syntaxes: &[&str]) -> Self {
        ProposedContext {
            abstract_syntax: abstract_syntax.into(),
            transfer_syntaxes: transfer_syntaxes.iter().map(|ts| ts.to_string()).collect(),
            roles: Roles::SCU,
        }
    }
}

/// What we propose.
#[derive(Debug, Clone)]
pub struct Proposal {
    pub calling_ae_title: String,
    pub called_ae_title: String,
    /// Given IDs 1, 3, 5... in this order.
    pub contexts: Vec<ProposedContext>,
    /// The largest P-DATA-TF we accept (51H); 0 = unlimited.
    pub max_pdu_length: u32,
    pub implementation_class_uid: String,
    pub implementation_version_name: String,
}

/// A proposal no A-ASSOCIATE-RQ can carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposalError {
    TooManyContexts(usize),
    /// One SOP class proposed with two different sets of roles: PS3.7 D.3.3.4 has one role
    /// selection item per SOP class.
    ConflictingRoles(String),
}

impl fmt::Display for ProposalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposalError::TooManyContexts(n) => {
                write!(f, "{n} presentation contexts proposed, at most {MAX_CONTEXTS} fit an association")
            }
            ProposalError::ConflictingRoles(uid) => write!(f, "{uid} proposed with different roles"),
        }
    }
}

impl std::error::Error for ProposalError {}

fn context_id(index: usize) -> u8 {
    // Checked against MAX_CONTEXTS first: 2 * 127 + 1 = 255.
    (2 * index + 1) as u8
}

impl Proposal {
    /// The A-ASSOCIATE-RQ: contexts with IDs 1, 3, 5..., a role selection item for each SOP
    /// class proposed with other than the default roles, our receive limit and identity.
    pub fn request(&self) -> Result<AssociateRq, ProposalError> {
        if self.contexts.len() > MAX_CONTEXTS {
            return Err(ProposalError::TooManyContexts(self.contexts.len()));
        }
        let mut role_selections: Vec<RoleSelection> = Vec::new();
        for context in self.contexts.iter().filter(|c| c.roles != Roles::SCU) {
            let item = RoleSelection {
                sop_class_uid: context.abstract_syntax.clone(),
                scu_role: context.roles.scu,
                scp_role: context.roles.scp,
            };
            match role_selections.iter().find(|r| r.sop_class_uid == item.sop_class_uid) {
                Some(earlier) if *earlier != item => return Err(ProposalError::ConflictingRoles(item.sop_class_uid)),
                Some(_) => {}
                None => role_selections.push(item),
            }
        }
        if let Some(default) = self
            .contexts
            .iter()
            .find(|c| c.roles == Roles::SCU && role_selections.iter().any(|r| r.sop_class_uid == c.abstract_syntax))
        {
            return Err(ProposalError::ConflictingRoles(default.abstract_syntax.clone()));
        }
        Ok(AssociateRq {
            protocol_version: 1,
            called_ae_title: self.called_ae_title.clone(),
            calling_ae_title: self.calling_ae_title.clone(),
            application_context: DICOM_APPLICATION_CONTEXT.into(),
            presentation_contexts: self
                .contexts
                .iter()
                .enumerate()
                .map(|(i, c)| PresentationContextRq {
                    id: context_id(i),
                    abstract_syntax: c.abstract_syntax.clone(),
                    transfer_syntaxes: c.transfer_syntaxes.clone(),
                })
                .collect(),
            user_information: UserInformation {
                max_pdu_length: Some(self.max_pdu_length),
                implementation_class_uid: Some(self.implementation_class_uid.clone()),
                implementation_version_name: Some(self.implementation_version_name.clone()),
                role_selections,
                ..Default::default()
            },
        })
    }

    /// The association the acceptor's A-ASSOCIATE-AC leaves: the contexts it accepted with a
    /// transfer syntax we proposed and know, and the roles it granted (PS3.7 D.3.3.4). A
    /// context left with no role is dropped, as is one whose answer makes no sense.
    pub fn accepted(&self, ac: &AssociateAc) -> Association {
        let peer_max_pdu_length = ac.user_information.max_pdu_length.unwrap_or(0);
        let mut association =
            Association::new(self.calling_ae_title.clone(), self.called_ae_title.clone(), peer_max_pdu_length);
        for answer in &ac.presentation_contexts {
            if answer.result != PresentationContextResult::Acceptance || answer.id % 2 == 0 {
                continue;
            }
            let Some(proposed) = self.contexts.get(usize::from(answer.id / 2)) else { continue };
            let Some(transfer_syntax) = proposed
                .transfer_syntaxes
                .iter()
                .find(|ts| **ts == answer.transfer_syntax)
                .and_then(|ts| transfer_syntax::lookup(ts))
            else {
                continue;
            };
            let reply =
                ac.user_information.role_selections.iter().find(|r| r.sop_class_uid == proposed.abstract_syntax);
            let roles = granted_roles(proposed.roles, reply);
            if association.context(answer.id).is_some() || !roles.any() {
                continue;
            }
            association.accept(AcceptedContext {
                id: answer.id,
                abstract_syntax: proposed.abstract_syntax.clone(),
                transfer_syntax,
                roles,
            });
        }
        association
    }
}

/// Our roles once the acceptor answered (PS3.7 D.3.3.4): those we proposed that it accepted;
/// without an answer to our item, or without an item, the defaults (we are SCU). A reply to a
/// role we did not propose is ignored.
fn granted_roles(proposed: Roles, reply: Option<&RoleSelection>) -> Roles {
    if proposed == Roles::SCU {
        return Roles::SCU;
    }
    match reply {
        Some(reply) => Roles { scu: proposed.scu && reply.scu_role, scp: proposed.scp && reply.scp_role },
        None => Roles { scu: proposed.scu, scp: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::transfer_syntax::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN};
    use crate::ul::pdu::PresentationContextAc;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
    const GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";

    fn proposal(contexts: Vec<ProposedContext>) -> Proposal {
        Proposal {
            calling_ae_title: "US".into(),
            called_ae_title: "PACS".into(),
            contexts,
            max_pdu_length: 16384,
            implementation_class_uid: "1.2.3".into(),
            implementation_version_name: "TEST".into(),
        }
    }

    fn receiving(abstract_syntax: &str) -> ProposedContext {
        ProposedContext { roles: Roles::SCP, ..ProposedContext::scu(abstract_syntax, &[EXPLICIT_VR_LITTLE_ENDIAN]) }
    }

    fn ac(contexts: &[(u8, PresentationContextResult, &str)], roles: Vec<RoleSelection>) -> AssociateAc {
        AssociateAc {
            protocol_version: 1,
            presentation_contexts: contexts
                .iter()
                .map(|&(id, result, ts)| PresentationContextAc { id, result, transfer_syntax: ts.into() })
                .collect(),
            user_information: UserInformation {
                max_pdu_length: Some(32768),
                role_selections: roles,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn request_numbers_contexts_and_proposes_roles_only_where_not_default() {
        let p = proposal(vec![ProposedContext::scu(GET, &[IMPLICIT_VR_LITTLE_ENDIAN]), receiving(CT), receiving(MR)]);
        let rq = p.request().unwrap();
        let ids: Vec<u8> = rq.presentation_contexts.iter().map(|c| c.id).collect();
        assert_eq!(ids, [1, 3, 5]);
        assert_eq!(
            rq.user_information.role_selections,
            vec![
                RoleSelection { sop_class_uid: CT.into(), scu_role: false, scp_role: true },
                RoleSelection { sop_class_uid: MR.into(), scu_role: false, scp_role: true },
            ]
        );
        assert_eq!(rq.user_information.max_pdu_length, Some(16384));
        assert_eq!(rq.calling_ae_title, "US");
    }

    #[test]
    fn request_refuses_what_no_rq_can_carry() {
        let many = proposal(vec![ProposedContext::scu(CT, &[EXPLICIT_VR_LITTLE_ENDIAN]); MAX_CONTEXTS + 1]);
        assert_eq!(many.request().unwrap_err(), ProposalError::TooManyContexts(129));
        assert!(proposal(vec![ProposedContext::scu(CT, &[EXPLICIT_VR_LITTLE_ENDIAN]); MAX_CONTEXTS]).request().is_ok());
        let conflicting = proposal(vec![receiving(CT), ProposedContext::scu(CT, &[EXPLICIT_VR_LITTLE_ENDIAN])]);
        assert_eq!(conflicting.request().unwrap_err(), ProposalError::ConflictingRoles(CT.into()));
        assert!(proposal(vec![receiving(CT), receiving(CT)]).request().is_ok(), "the same roles twice: one item");
    }

    #[test]
    fn accepted_keeps_contexts_with_a_proposed_transfer_syntax_and_a_role() {
        use PresentationContextResult::*;
        let p = proposal(vec![
            ProposedContext::scu(GET, &[IMPLICIT_VR_LITTLE_ENDIAN]),
            receiving(CT),
            receiving(MR),
            ProposedContext::scu(CT, &[EXPLICIT_VR_LITTLE_ENDIAN]),
            ProposedContext::scu(MR, &[EXPLICIT_VR_LITTLE_ENDIAN]),
        ]);
        let answer = ac(
            &[
                (1, Acceptance, IMPLICIT_VR_LITTLE_ENDIAN),
                (3, Acceptance, EXPLICIT_VR_LITTLE_ENDIAN),
                (5, Acceptance, EXPLICIT_VR_LITTLE_ENDIAN),
                // A transfer syntax we did not propose: unusable.
                (7, Acceptance, IMPLICIT_VR_LITTLE_ENDIAN),
                (9, AbstractSyntaxNotSupported, EXPLICIT_VR_LITTLE_ENDIAN),
                // Not one of our IDs.
                (11, Acceptance, EXPLICIT_VR_LITTLE_ENDIAN),
            ],
            vec![
                RoleSelection { sop_class_uid: CT.into(), scu_role: false, scp_role: true },
                // Turned down: MR has no role left for us.
                RoleSelection { sop_class_uid: MR.into(), scu_role: false, scp_role: false },
            ],
        );
        let association = p.accepted(&answer);
        let kept: Vec<(u8, &str, Roles)> =
            association.contexts().map(|c| (c.id, c.abstract_syntax.as_str(), c.roles)).collect();
        assert_eq!(kept, [(1, GET, Roles::SCU), (3, CT, Roles::SCP)]);
        assert_eq!(association.peer_max_pdu_length, 32768);
        assert_eq!(association.invoking(GET).map(|c| c.id), Some(1));
        assert!(association.invoking(CT).is_none(), "we may only receive on CT's context");
    }

    #[test]
    fn roles_granted_follow_ps3_7_d_3_3_4() {
        let both = Roles::BOTH;
        let reply = |scu_role, scp_role| RoleSelection { sop_class_uid: CT.into(), scu_role, scp_role };
        assert_eq!(granted_roles(both, Some(&reply(true, true))), Roles::BOTH);
        assert_eq!(granted_roles(both, Some(&reply(false, true))), Roles::SCP);
        assert_eq!(granted_roles(both, None), Roles::SCU, "no reply: the defaults");
        assert_eq!(granted_roles(Roles::SCP, Some(&reply(true, true))), Roles::SCP, "SCU was not proposed");
        assert_eq!(granted_roles(Roles::SCU, Some(&reply(false, true))), Roles::SCU, "no item proposed");
        assert_eq!(granted_roles(Roles::SCP, None), Roles::NEITHER);
    }
}
