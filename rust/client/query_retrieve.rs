//! C-FIND, C-MOVE and C-GET as the requestor (PS3.4 annex C, PS3.7 §9.1.2 to §9.1.4). Each
//! is an operation in progress, read one response at a time: a C-FIND's matches, a
//! retrieve's pending sub-operation counts, then the final status. The C-STOREs a C-GET
//! brings back on the same association (PS3.4 C.4.3) go through the store service, the very
//! path of the server's C-STOREs.
//!
//! Identifiers go out and come back as data sets encoded in the transfer syntax of the
//! context accepted for the information model (`Client::context_for`).

use super::{Client, ClientError};
use crate::dimse::channel::{Collected, Discard};
use crate::dimse::command::{element, field, CommandSet};
use crate::dimse::query_retrieve::{self, SubOperations};
use crate::dimse::status::{Status, StatusClass};
use crate::service::store::StoreProvider;
use crate::ul::association::requestor::{ProposedContext, MAX_CONTEXTS};
use crate::ul::association::Roles;

/// Largest identifier kept from a response; a peer sending more breaks the association
/// (identifiers are a few KiB: this only bounds what a peer can make us hold).
pub const MAX_IDENTIFIER_LEN: usize = 4 << 20;

/// Storage presentation contexts a C-GET association can propose beside its information
/// model's (128 contexts in all, PS3.8 §9.3.2.2).
pub const MAX_GET_STORAGE_CONTEXTS: usize = MAX_CONTEXTS - 1;

/// The presentation contexts of an association for C-GET (PS3.4 C.4.3.1): the information
/// model `model`, where we are SCU, with the transfer syntax its identifiers are encoded in,
/// and one context per storage SOP class of `sop_classes` where we propose to be SCP (PS3.7
/// D.3.3.4), each with `transfer_syntaxes` (those we store as they come).
pub fn get_contexts(
    model: &str,
    identifier_transfer_syntax: &str,
    sop_classes: &[&str],
    transfer_syntaxes: &[&str],
) -> Result<Vec<ProposedContext>, ClientError> {
    if sop_classes.len() > MAX_GET_STORAGE_CONTEXTS {
        return Err(ClientError::Protocol(format!(
            "{} storage SOP classes for C-GET, at most {MAX_GET_STORAGE_CONTEXTS} fit an association",
            sop_classes.len()
        )));
    }
    let storage = sop_classes
        .iter()
        .map(|class| ProposedContext { roles: Roles::SCP, ..ProposedContext::scu(class, transfer_syntaxes) });
    Ok(std::iter::once(ProposedContext::scu(model, &[identifier_transfer_syntax])).chain(storage).collect())
}

/// The status of a final response, with its ErrorComment.
fn final_status(code: u16, response: &CommandSet) -> Status {
    Status { code, comment: response.get_text(element::ERROR_COMMENT) }
}

/// The operation a response belongs to.
struct Operation {
    context_id: u8,
    message_id: u16,
    response_field: u16,
}

impl Client {
    /// Sends a Q/R request with its identifier.
    async fn begin(
        &mut self,
        model: &str,
        rq: impl FnOnce(u16) -> CommandSet,
        response_field: u16,
        identifier: &[u8],
    ) -> Result<Operation, ClientError> {
        let (context_id, message_id) = self.invoke(model)?;
        self.request(context_id, &rq(message_id), Some(&[identifier])).await?;
        Ok(Operation { context_id, message_id, response_field })
    }

    /// C-FIND with `identifier` on the information model `model` (e.g.
    /// `query_retrieve::STUDY_ROOT_FIND`): the matches as they come (`Find::next_match`).
    pub async fn find(&mut self, model: &str, identifier: &[u8]) -> Result<Find<'_>, ClientError> {
        let operation =
            self.begin(model, |id| query_retrieve::c_find_rq(id, model), field::C_FIND_RSP, identifier).await?;
        Ok(Find { client: self, operation, status: None })
    }

    /// C-MOVE of what `identifier` names to the AE `destination`: the sub-operations are
    /// C-STOREs from the peer to that AE, on another association (`Retrieve`).
    pub async fn move_to(
        &mut self,
        model: &str,
        destination: &str,
        identifier: &[u8],
    ) -> Result<Retrieve<'_>, ClientError> {
        let rq = |id| query_retrieve::c_move_rq(id, model, destination);
        let operation = self.begin(model, rq, field::C_MOVE_RSP, identifier).await?;
        Ok(Retrieve { client: self, operation, store: None, outcome: None })
    }

    /// C-GET of what `identifier` names: the peer sends the instances as C-STOREs on this
    /// association, on the storage contexts where we are SCP (`get_contexts`), and `store`
    /// stores and answers each (`Retrieve`).
    pub async fn get<'a>(
        &'a mut self,
        model: &str,
        identifier: &[u8],
        store: &'a mut StoreProvider,
    ) -> Result<Retrieve<'a>, ClientError> {
        let rq = |id| query_retrieve::c_get_rq(id, model);
        let operation = self.begin(model, rq, field::C_GET_RSP, identifier).await?;
        Ok(Retrieve { client: self, operation, store: Some(store), outcome: None })
    }

    /// The next response of `operation`; the requests the peer makes meanwhile go to
    /// `store` when they are C-STOREs it can take, and are refused (0211) otherwise. The
    /// response's identifier, if it has one, is read whole (`MAX_IDENTIFIER_LEN`).
    async fn next_response(
        &mut self,
        operation: &Operation,
        mut store: Option<&mut StoreProvider>,
    ) -> Result<(CommandSet, Option<Vec<u8>>), ClientError> {
        loop {
            let (context_id, command) = match self.channel.receive_command().await {
                Ok(received) => received,
                Err(e) => return Err(self.fail(e).await),
            };
            let command_field = command.command_field().unwrap_or(0);
            let is_request = command_field & 0x8000 == 0;
            let served = match store.as_deref_mut() {
                Some(store) if command_field == field::C_STORE_RQ && command.has_data_set() => {
                    Some(store.serve(&mut self.channel, context_id, &command).await)
                }
                _ if is_request => Some(self.channel.refuse_unsupported(context_id, &command, &mut Discard).await),
                _ => None,
            };
            match served {
                Some(Ok(())) => continue,
                Some(Err(e)) => return Err(self.fail(e).await),
                None => {}
            }
            if context_id != operation.context_id
                || command_field != operation.response_field
                || command.get_u16(element::MESSAGE_ID_BEING_RESPONDED_TO) != Some(operation.message_id)
            {
                let detail = format!("unexpected response {command_field:#06x} to message {}", operation.message_id);
                return Err(self.violation(detail).await);
            }
            if !command.has_data_set() {
                return Ok((command, None));
            }
            let mut identifier = Collected::with_limit(MAX_IDENTIFIER_LEN);
            if let Err(e) = self.channel.receive_data(context_id, &mut identifier).await {
                return Err(self.fail(e).await);
            }
            if identifier.overflowed {
                return Err(self.violation(format!("identifier larger than {MAX_IDENTIFIER_LEN} bytes")).await);
            }
            return Ok((command, Some(identifier.bytes)));
        }
    }

    /// C-CANCEL of `operation` (PS3.7 §9.3.2.3): no response of its own.
    async fn cancel(&mut self, operation: &Operation) -> Result<(), ClientError> {
        let rq = query_retrieve::c_cancel_rq(operation.message_id);
        self.request(operation.context_id, &rq, None).await
    }

    /// The status of a response, required.
    async fn status_of(&mut self, response: &CommandSet) -> Result<u16, ClientError> {
        match response.status() {
            Some(status) => Ok(status),
            None => Err(self.violation("response without a status".into()).await),
        }
    }
}

/// A C-FIND in progress.
pub struct Find<'a> {
    client: &'a mut Client,
    operation: Operation,
    status: Option<Status>,
}

impl Find<'_> {
    /// The identifier of the next match (a pending response's, PS3.4 C.4.1.3.1); None once
    /// the final response came, its status then in `status`.
    pub async fn next_match(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        while self.status.is_none() {
            let (response, identifier) = self.client.next_response(&self.operation, None).await?;
            let code = self.client.status_of(&response).await?;
            match (StatusClass::of(code), identifier) {
                (StatusClass::Pending, Some(identifier)) => return Ok(Some(identifier)),
                // A pending response without a match says nothing: the next one will.
                (StatusClass::Pending, None) => {}
                // An identifier on a final response is not a match (PS3.7 §9.1.2.1.6).
                (_, _) => self.status = Some(final_status(code, &response)),
            }
        }
        Ok(None)
    }

    /// The final status, once `next_match` returned None.
    pub fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }

    /// Asks the peer to stop (C-CANCEL-RQ): the matches already on their way still come,
    /// then the final status, Cancel (FE00) or the usual one.
    pub async fn cancel(&mut self) -> Result<(), ClientError> {
        self.client.cancel(&self.operation).await
    }
}

/// How a C-MOVE or C-GET ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrieveOutcome {
    pub status: Status,
    /// The final counts (PS3.4 C.4.2.1.5, C.4.3.1.4): completed, failed, warning.
    pub sub_operations: SubOperations,
    /// The final response's identifier, when it has one: the Failed SOP Instance UID List
    /// (0008,0058) of the sub-operations that failed (PS3.4 C.4.2.1.4.2), encoded in the
    /// information model's transfer syntax.
    pub identifier: Option<Vec<u8>>,
}

/// A pending response of a C-MOVE or C-GET (PS3.4 C.4.2.1.5): its status (FF00, or FF01
/// for a C-GET some of whose instances were not in the SOP classes we accept) and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub status: u16,
    pub sub_operations: SubOperations,
}

/// A C-MOVE or C-GET in progress.
pub struct Retrieve<'a> {
    client: &'a mut Client,
    operation: Operation,
    /// C-GET: where the instances go.
    store: Option<&'a mut StoreProvider>,
    outcome: Option<RetrieveOutcome>,
}

impl Retrieve<'_> {
    /// The counts of the next pending response (PS3.4 C.4.2.1.5); None once the final
    /// response came, the outcome then in `outcome`. For a C-GET, the instances that come
    /// meanwhile are stored (and answered) on the way.
    pub async fn next_pending(&mut self) -> Result<Option<Pending>, ClientError> {
        if self.outcome.is_some() {
            return Ok(None);
        }
        let (response, identifier) = self.client.next_response(&self.operation, self.store.as_deref_mut()).await?;
        let code = self.client.status_of(&response).await?;
        let sub_operations = SubOperations::of(&response);
        if StatusClass::of(code) == StatusClass::Pending {
            return Ok(Some(Pending { status: code, sub_operations }));
        }
        self.outcome = Some(RetrieveOutcome { status: final_status(code, &response), sub_operations, identifier });
        Ok(None)
    }

    /// The outcome, once `next_pending` returned None.
    pub fn outcome(&self) -> Option<&RetrieveOutcome> {
        self.outcome.as_ref()
    }

    /// Reads the responses to the final one; its outcome.
    pub async fn finish(mut self) -> Result<RetrieveOutcome, ClientError> {
        while self.next_pending().await?.is_some() {}
        Ok(self.outcome.expect("set when next_pending returns None"))
    }

    /// Asks the peer to stop (C-CANCEL-RQ): it ends with Cancel (FE00) once the
    /// sub-operation under way is done.
    pub async fn cancel(&mut self) -> Result<(), ClientError> {
        self.client.cancel(&self.operation).await
    }

    /// Waits until the peer sends something (`Channel::readable`): cancel-safe, so that a
    /// caller can wait for the peer and for its own reasons to `cancel` at once, and call
    /// `next_pending` when the peer came first. Unbounded: the caller bounds it.
    pub async fn readable(&mut self) -> Result<(), ClientError> {
        match self.client.channel.readable().await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.client.fail(e).await),
        }
    }

    /// C-GET: the instances stored so far (answered success); 0 for a C-MOVE.
    pub fn stored(&self) -> u64 {
        self.store.as_ref().map_or(0, |store| store.counts().stored)
    }
}
