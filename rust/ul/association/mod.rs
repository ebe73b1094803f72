//! Association negotiation (PS3.8 §7.1, PS3.7 annex D) for both roles, side by side: the
//! acceptor deciding on an A-ASSOCIATE-RQ (`acceptor`), the requestor proposing one and
//! reading the answer (`requestor`). Both yield the same [`Association`]: who is on each
//! end, the peer's PDU limit, and the accepted presentation contexts with the roles we play
//! on each.
//!
//! Which services exist is not decided here: the acceptor's caller says which abstract
//! syntaxes it supports and in which roles (`acceptor::SupportedSyntaxes`), the requestor's
//! caller what it proposes.

pub mod acceptor;
pub mod requestor;

use crate::dicom::transfer_syntax::TransferSyntax;

/// The roles one side plays for an abstract syntax (PS3.7 D.3.3.4): SCU, it invokes
/// operations (sends requests); SCP, it performs them (answers requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub scu: bool,
    pub scp: bool,
}

impl Roles {
    pub const SCU: Roles = Roles { scu: true, scp: false };
    pub const SCP: Roles = Roles { scu: false, scp: true };
    pub const BOTH: Roles = Roles { scu: true, scp: true };
    pub const NEITHER: Roles = Roles { scu: false, scp: false };

    /// Whether any role is left: a context on which neither side may invoke anything is
    /// useless and refused.
    pub fn any(self) -> bool {
        self.scu || self.scp
    }
}

/// A presentation context both sides agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedContext {
    /// Its ID, odd, 1..=255 (PS3.8 §9.3.2.2).
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntax: &'static TransferSyntax,
    /// The roles *we* play on it: SCP, we answer the peer's requests; SCU, we may send ours.
    pub roles: Roles,
}

/// An established association, on either side; its `Default` is none yet (nothing accepted).
#[derive(Debug, Clone, Default)]
pub struct Association {
    /// From the A-ASSOCIATE-RQ: the requestor's AE title and the one it called (ours when we
    /// accept, the peer's when we request).
    pub calling_ae_title: String,
    pub called_ae_title: String,
    /// The largest P-DATA-TF the peer accepts from us; 0 = no limit (PS3.8 §D.1).
    pub peer_max_pdu_length: u32,
    /// Accepted contexts by context ID.
    contexts: Vec<Option<AcceptedContext>>,
}

impl Association {
    fn new(calling_ae_title: String, called_ae_title: String, peer_max_pdu_length: u32) -> Self {
        Association { calling_ae_title, called_ae_title, peer_max_pdu_length, contexts: vec![None; 256] }
    }

    fn accept(&mut self, context: AcceptedContext) {
        let id = usize::from(context.id);
        self.contexts[id] = Some(context);
    }

    /// The accepted context of this ID.
    pub fn context(&self, id: u8) -> Option<&AcceptedContext> {
        self.contexts.get(usize::from(id)).and_then(Option::as_ref)
    }

    /// Every accepted context, by ID.
    pub fn contexts(&self) -> impl Iterator<Item = &AcceptedContext> {
        self.contexts.iter().flatten()
    }

    /// The first accepted context for `abstract_syntax` on which we may send requests.
    pub fn invoking(&self, abstract_syntax: &str) -> Option<&AcceptedContext> {
        self.contexts().find(|c| c.roles.scu && c.abstract_syntax == abstract_syntax)
    }
}
