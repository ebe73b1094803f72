//! The C-STORE service provider (PS3.4 annex B, PS3.7 §9.1.1), for any association that
//! receives C-STOREs: the server's, and one a C-GET requestor opened (PS3.4 C.4.3), with the
//! very same path. Per instance: stream the data set fragments to a temp file while walking
//! it and reading the attributes we need from its leading part, then decide the status, move
//! the file into place (journaled) before answering, and report the instance.
//!
//! File writes happen inline with blocking std I/O: a write to the page cache takes
//! microseconds, far less than handing each fragment to a blocking thread pool would cost
//! (past its first MiB, a large data set goes to a background writer: see
//! `storage::background`). With an fsync policy, placing the file runs under
//! `block_in_place`, so other associations keep their worker thread. What need not delay an
//! answer waits until it is sent: closing the stored file, creating the next instance's temp
//! file, handing the event to Python.

use std::fs::File;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::clock::unix_time;
use crate::dicom::attributes::{Attributes, Tag};
use crate::dicom::extract::{ExtractError, Extractor};
use crate::dicom::inflate::InflateLimits;
use crate::dicom::transfer_syntax::TransferSyntax;
use crate::dicom::uid;
use crate::dimse::channel::{Channel, ChannelError, DataSink};
use crate::dimse::command::{self, field, CommandSet};
use crate::dimse::status::{self, Status};
use crate::events::{Event, EventSink, InstanceFailed, InstanceStored};
use crate::storage::file_meta::FileMeta;
use crate::storage::path_template::PathContext;
use crate::storage::writer::{CommitError, Committed, PartialInstance, Storage, TempFile};
use crate::transport::ByteStream;

/// The AE titles an instance goes between: `sender` is the file meta's Source AE Title and
/// the path template's {CallingAET} (the events' `calling_aet`), `receiver` {CalledAET}
/// (`called_aet`). On an association the server accepted, the calling and called AE; on
/// one a C-GET requestor opened, the other way round: the peer it called sends.
pub struct AeTitles<'a> {
    pub sender: &'a str,
    pub receiver: &'a str,
}

/// Counters the store path keeps up as it goes (the server's `/metrics`).
pub trait StoreMetrics: Send + Sync {
    /// Data set bytes received, per fragment.
    fn bytes_received(&self, bytes: usize);
    /// An instance answered with `code`, whose command came at `received_at`.
    fn instance_answered(&self, code: u16, received_at: SystemTime);
}

/// No counters: for an association whose instances no `/metrics` counts.
pub struct Uncounted;

impl StoreMetrics for Uncounted {
    fn bytes_received(&self, _: usize) {}
    fn instance_answered(&self, _: u16, _: SystemTime) {}
}

/// The store path as configured: where instances go, what they must hold, how they are
/// answered and reported. One per server (or per client that receives), shared by its
/// associations.
pub struct StoreService {
    pub storage: Arc<Storage>,
    /// (tag, keyword) of the attributes an instance must have to be stored.
    pub required: Vec<(Tag, &'static str)>,
    pub inflate: InflateLimits,
    /// Answer success only once Python has registered the instance (`ack = "registered"`).
    pub ack_registered: bool,
    pub events: EventSink,
    pub metrics: Arc<dyn StoreMetrics>,
}

/// Who an association is, for the events of its instances.
#[derive(Debug, Clone)]
pub struct Origin {
    pub association_id: u64,
    /// The peer's address.
    pub peer: String,
    /// See `AeTitles`.
    pub sender_aet: String,
    pub receiver_aet: String,
}

impl Origin {
    fn ae_titles(&self) -> AeTitles<'_> {
        AeTitles { sender: &self.sender_aet, receiver: &self.receiver_aet }
    }
}

/// What one association's store provider has done.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreCounts {
    /// Answered success.
    pub stored: u64,
    /// Answered anything else.
    pub failed: u64,
    /// Data set bytes received.
    pub bytes: u64,
}

/// The C-STORE SCP of one association.
pub struct StoreProvider {
    service: Arc<StoreService>,
    origin: Origin,
    /// The temp file of the next instance, made ahead (`prepare_next`).
    reserved: Option<TempFile>,
    counts: StoreCounts,
}

impl StoreProvider {
    pub fn new(service: Arc<StoreService>, origin: Origin) -> Self {
        StoreProvider { service, origin, reserved: None, counts: StoreCounts::default() }
    }

    pub fn counts(&self) -> StoreCounts {
        self.counts
    }

    /// Serves one C-STORE-RQ whose command came on `context_id` (and announces a data set,
    /// `CommandSet::has_data_set`): receives the data set into a temp file, then stores,
    /// journals, answers and reports the instance (see the module's documentation). A
    /// request that cannot be stored is still received whole, then answered with its
    /// failure. An error of the channel leaves the instance unstored and its temp file gone.
    pub async fn serve<S: ByteStream>(
        &mut self,
        channel: &mut Channel<S>,
        context_id: u8,
        command: &CommandSet,
    ) -> Result<(), ChannelError> {
        let context = channel.association().context(context_id).expect("the channel checks contexts");
        let request = Request {
            message_id: command.message_id().unwrap_or(0),
            context_id,
            sop_class_uid: command.affected_sop_class_uid().unwrap_or_default(),
            sop_instance_uid: command.affected_sop_instance_uid().unwrap_or_default(),
            transfer_syntax: context.transfer_syntax,
        };
        let refusal = if request.sop_instance_uid.is_empty() || request.sop_class_uid.is_empty() {
            Some(Status::failure(status::INVALID_COMMAND, "C-STORE-RQ lacks Affected SOP Class/Instance UID"))
        } else if request.sop_class_uid != context.abstract_syntax {
            Some(Status::failure(status::SOP_CLASS_NOT_SUPPORTED, "SOP Class differs from the presentation context"))
        } else if !context.roles.scp {
            // PS3.7 D.3.3.4: the peer may invoke only where we accepted to be SCP.
            Some(Status::failure(status::SOP_CLASS_NOT_SUPPORTED, "we are not the SCP of this SOP Class here"))
        } else {
            None
        };
        let service = self.service.clone();
        let ae_titles = self.origin.ae_titles();
        let mut reception =
            InstanceReception::begin(&service.storage, self.reserved.take(), &ae_titles, request, service.inflate);
        if let Some(refusal) = refusal {
            reception.reject(refusal);
        }
        let mut receiving =
            Receiving { reception: &mut reception, metrics: &*service.metrics, bytes: &mut self.counts.bytes };
        channel.receive_data(context_id, &mut receiving).await?;
        reception.finish_writes().await;
        self.finish(channel, reception).await
    }

    /// The data set is complete: store it, journal it, answer, and report it. With
    /// `ack_registered` the answer also waits for Python to register the instance.
    async fn finish<S: ByteStream>(
        &mut self,
        channel: &mut Channel<S>,
        reception: InstanceReception,
    ) -> Result<(), ChannelError> {
        let service = self.service.clone();
        let (message_id, context_id) = (reception.request.message_id, reception.request.context_id);
        let sop_class_uid = reception.request.sop_class_uid.clone();
        let sop_instance_uid = reception.request.sop_instance_uid.clone();
        let transfer_syntax = reception.request.transfer_syntax.uid;
        let received_at = reception.received_at;
        let origin = &self.origin;
        let ae_titles = origin.ae_titles();
        let complete = || reception.complete(&service.storage, &ae_titles, &service.required);
        // An fsync waits on the device for milliseconds: hand this worker's other tasks to
        // another thread meanwhile. Without one, placing the file takes microseconds, less
        // than that hand-off (a thread wake-up per instance) would cost.
        let outcome = if service.storage.syncs() { tokio::task::block_in_place(complete) } else { complete() };
        let (st, event, registration, stored_file) = match outcome {
            StoreOutcome::Stored { committed, attributes, file } => {
                let seq = committed.journal_seq;
                let event = Event::InstanceStored(Box::new(InstanceStored {
                    association_id: origin.association_id,
                    path: committed.path.to_string_lossy().into_owned(),
                    size: committed.size,
                    attributes: *attributes,
                    calling_aet: origin.sender_aet.clone(),
                    called_aet: origin.receiver_aet.clone(),
                    peer: origin.peer.clone(),
                    transfer_syntax: transfer_syntax.to_string(),
                    received_at: unix_time(received_at),
                    stored_at: unix_time(SystemTime::now()),
                    duplicate: committed.duplicate,
                    journal_seq: seq,
                }));
                let registration = service.ack_registered.then(|| service.storage.journal().registration_of(seq));
                (Status::success(), event, registration, Some(file))
            }
            StoreOutcome::Failed(st) => {
                let event = Event::InstanceFailed(InstanceFailed {
                    association_id: origin.association_id,
                    calling_aet: origin.sender_aet.clone(),
                    peer: origin.peer.clone(),
                    sop_class_uid: sop_class_uid.clone(),
                    sop_instance_uid: sop_instance_uid.clone(),
                    status: st.code,
                    comment: st.comment.clone().unwrap_or_default(),
                });
                (st, event, None, None)
            }
        };
        let reply = Reply {
            context_id,
            message_id,
            sop_class_uid: &sop_class_uid,
            sop_instance_uid: &sop_instance_uid,
            received_at,
        };
        let Some(registered) = registration else {
            self.answer(channel, &reply, &st).await?;
            self.prepare_next(stored_file);
            // After the response: a slow event consumer delays the next request, not this one.
            service.events.send(event).await;
            return Ok(());
        };
        // The event must reach Python before the answer can: registration comes first.
        service.events.send(event).await;
        let st = match registered.await {
            Ok(true) => st,
            _ => Status::failure(status::OUT_OF_RESOURCES, "stored, but registration failed"),
        };
        self.answer(channel, &reply, &st).await?;
        self.prepare_next(stored_file);
        Ok(())
    }

    /// Sends the C-STORE-RSP and counts the outcome.
    async fn answer<S: ByteStream>(
        &mut self,
        channel: &mut Channel<S>,
        reply: &Reply<'_>,
        st: &Status,
    ) -> Result<(), ChannelError> {
        let rsp = command::response(
            field::C_STORE_RSP,
            reply.message_id,
            reply.sop_class_uid,
            Some(reply.sop_instance_uid),
            st,
        );
        channel.send(reply.context_id, &rsp, None).await?;
        self.service.metrics.instance_answered(st.code, reply.received_at);
        if st.is_success() {
            self.counts.stored += 1;
        } else {
            self.counts.failed += 1;
        }
        Ok(())
    }

    /// While the sender reads its answer: closes the stored file (already in place) and
    /// creates the temp file of the next instance, so that neither is on an instance's way
    /// to its answer.
    fn prepare_next(&mut self, stored_file: Option<File>) {
        drop(stored_file);
        if self.reserved.is_none() {
            // Failing here, the next instance tries again, and answers A700 if it fails too.
            self.reserved = self.service.storage.reserve().ok();
        }
    }

    /// Removes the temp file reserved for the next instance (dropping it unlinks it): the
    /// association is ending. (An unfinished reception's goes with the `serve` it was in.)
    pub fn discard_temp_files(&mut self) {
        self.reserved = None;
    }
}

/// The data set's way in: counted, then handed to the reception.
struct Receiving<'a> {
    reception: &'a mut InstanceReception,
    metrics: &'a dyn StoreMetrics,
    bytes: &'a mut u64,
}

impl DataSink for Receiving<'_> {
    async fn fragment(&mut self, data: Bytes) {
        *self.bytes += data.len() as u64;
        self.metrics.bytes_received(data.len());
        self.reception.on_fragment(data).await;
    }
}

/// What a C-STORE-RSP answers.
struct Reply<'a> {
    context_id: u8,
    message_id: u16,
    sop_class_uid: &'a str,
    sop_instance_uid: &'a str,
    /// When its command arrived (the store latency of `/metrics`).
    received_at: SystemTime,
}

/// What a C-STORE-RQ asks to store, and how its data set comes.
struct Request {
    message_id: u16,
    context_id: u8,
    sop_class_uid: String,
    sop_instance_uid: String,
    transfer_syntax: &'static TransferSyntax,
}

/// Inflated bytes per hand-off of a deflated data set to the blocking pool: a few ms of CPU.
/// Inflating is the one costly step of a data set's walk (up to ~1000 inflated bytes per byte
/// received): done on the async workers, one peer's deflate bomb would hold a worker, and
/// every association waiting on it, for seconds. In slices on the blocking pool, it holds no
/// worker, and the pool serves the slices of every peer in turn.
const INFLATE_SLICE: usize = 4 << 20;

/// One C-STORE-RQ whose data set is arriving.
struct InstanceReception {
    request: Request,
    received_at: SystemTime,
    partial: Option<PartialInstance>,
    /// Walks the data set; None only while a slice of inflation has it (`walk`), or when
    /// the instance was refused before its data set.
    extractor: Option<Extractor>,
    /// The first failure; once set, later fragments are only counted, never written.
    failure: Option<Status>,
}

/// What became of a completed reception: the instance stored (journaled, in place) or the
/// failure to answer.
enum StoreOutcome {
    /// In place; `file` is still open, to be closed once the sender has its answer.
    Stored {
        committed: Committed,
        attributes: Box<Attributes>,
        file: File,
    },
    Failed(Status),
}

impl InstanceReception {
    /// Opens the temp file (with its file meta) for a C-STORE-RQ, in `reserved` when the
    /// association made one ahead. A storage failure is remembered and answered (A700) once
    /// the data set has been received, as is an Affected SOP Instance UID that is not a UID
    /// (0117; an empty one is `serve`'s to answer). A deflated data set is inflated within
    /// `inflate`.
    fn begin(
        storage: &Storage,
        reserved: Option<TempFile>,
        ae_titles: &AeTitles,
        request: Request,
        inflate: InflateLimits,
    ) -> Self {
        if !request.sop_instance_uid.is_empty() && !uid::is_valid(&request.sop_instance_uid) {
            return Self::refused(request, invalid_sop_instance_uid());
        }
        let meta = FileMeta {
            media_storage_sop_class_uid: &request.sop_class_uid,
            media_storage_sop_instance_uid: &request.sop_instance_uid,
            transfer_syntax_uid: request.transfer_syntax.uid,
            source_ae_title: ae_titles.sender,
        };
        let (partial, failure) = match storage.begin(&meta, reserved) {
            Ok(partial) => (Some(partial), None),
            Err(e) => (None, Some(Status::failure(status::OUT_OF_RESOURCES, format!("cannot create file: {e}")))),
        };
        InstanceReception {
            extractor: Some(Extractor::whole(request.transfer_syntax.encoding, inflate)),
            request,
            received_at: SystemTime::now(),
            partial,
            failure,
        }
    }

    /// A reception refused before its data set: the data set is received and discarded.
    fn refused(request: Request, failure: Status) -> Self {
        InstanceReception {
            extractor: None,
            request,
            received_at: SystemTime::now(),
            partial: None,
            failure: Some(failure),
        }
    }

    /// One data set fragment, in order: walked (see `walk`), then written. Blocking file I/O
    /// for the first part of a data set (see the module for why); the rest of a large one
    /// waits while its background writer's queue is full.
    async fn on_fragment(&mut self, data: Bytes) {
        if self.failure.is_some() {
            return;
        }
        if let Err(e) = self.walk(&data).await {
            self.reject(walk_failure(&e));
            return;
        }
        if let Some(partial) = self.partial.as_mut() {
            if let Err(e) = partial.write(data).await {
                self.reject(Status::failure(status::OUT_OF_RESOURCES, format!("write failed: {e}")));
            }
        }
    }

    /// Walks `data` through the extractor: inline when it is read as it comes (counting
    /// bytes down, cheaper than any hand-off), in slices on the blocking pool when it must be
    /// inflated (see `INFLATE_SLICE`).
    async fn walk(&mut self, data: &Bytes) -> Result<(), ExtractError> {
        let Some(extractor) = self.extractor.as_mut() else {
            return Ok(());
        };
        if !extractor.inflates() {
            return extractor.feed(data).map(drop);
        }
        let mut at = 0;
        while let Some(mut extractor) = self.extractor.take() {
            let rest = data.slice(at..);
            let slice = tokio::task::spawn_blocking(move || {
                let fed = extractor.feed_within(&rest, INFLATE_SLICE);
                (extractor, fed)
            });
            let (extractor, fed) = match slice.await {
                Ok(done) => done,
                Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                // The runtime is shutting down: the association goes with it.
                Err(_) => return Err(ExtractError::Malformed("receiver stopping".into())),
            };
            self.extractor = Some(extractor);
            let fed = fed?;
            at += fed.consumed;
            if !fed.more {
                break;
            }
        }
        Ok(())
    }

    /// The data set is all in: waits until all of it is written (a failure is A700).
    async fn finish_writes(&mut self) {
        if let Some(partial) = self.partial.as_mut() {
            if let Err(e) = partial.finish_writes().await {
                self.reject(Status::failure(status::OUT_OF_RESOURCES, format!("write failed: {e}")));
            }
        }
    }

    /// Refuses the instance: the rest of its data set is still received (the protocol
    /// requires it) but not stored; the temp file goes at once (its Drop removes it).
    fn reject(&mut self, failure: Status) {
        self.partial = None;
        self.failure = Some(failure);
    }

    /// The whole data set has arrived: check it and move the file into place, journaled (see
    /// `storage::journal`). Success only when the file is at its final path and its journal
    /// entry written (the caller answers after this returns).
    fn complete(self, storage: &Storage, ae_titles: &AeTitles, required: &[(Tag, &'static str)]) -> StoreOutcome {
        if let Some(failure) = self.failure {
            return StoreOutcome::Failed(failure);
        }
        let Some(extractor) = self.extractor else {
            return StoreOutcome::Failed(Status::failure(status::CANNOT_UNDERSTAND, "data set not walked"));
        };
        let attributes = match extractor.finish() {
            Ok(attributes) => attributes,
            Err(e) => return StoreOutcome::Failed(walk_failure(&e)),
        };
        if let Some(failure) =
            check_attributes(&attributes, &self.request.sop_class_uid, &self.request.sop_instance_uid, required)
        {
            return StoreOutcome::Failed(failure);
        }
        let Some(partial) = self.partial else {
            return StoreOutcome::Failed(Status::failure(status::OUT_OF_RESOURCES, "no file to store"));
        };
        let context =
            PathContext { attributes: &attributes, calling_aet: ae_titles.sender, called_aet: ae_titles.receiver };
        let relative = storage.template().render(&context);
        match partial.commit(storage, &relative) {
            Ok((committed, file)) => StoreOutcome::Stored { committed, attributes: Box::new(attributes), file },
            Err(CommitError::Duplicate(path)) => StoreOutcome::Failed(Status::failure(
                status::DUPLICATE_SOP_INSTANCE,
                format!("duplicate of {}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()),
            )),
            Err(CommitError::Io(e)) => {
                StoreOutcome::Failed(Status::failure(status::OUT_OF_RESOURCES, format!("storing failed: {e}")))
            }
            Err(CommitError::Journal(e)) => {
                StoreOutcome::Failed(Status::failure(status::OUT_OF_RESOURCES, format!("journal write failed: {e}")))
            }
        }
    }
}

/// Why walking a data set failed, as a status: a bound of ours (A701), or a data set that
/// cannot be understood (C000).
fn walk_failure(e: &ExtractError) -> Status {
    match e {
        ExtractError::OverLimit(_) => Status::failure(status::INFLATE_LIMIT, e.to_string()),
        ExtractError::Malformed(_) => Status::failure(status::CANNOT_UNDERSTAND, format!("data set: {e}")),
    }
}

fn invalid_sop_instance_uid() -> Status {
    Status::failure(status::INVALID_SOP_INSTANCE, "SOP Instance UID is not a UID (PS3.5 9.1)")
}

/// The data set must agree with its command (PS3.4 B.2.3: A9xx "data set does not match SOP
/// class"), carry the attributes the configuration requires (Cxxx), and the UIDs that name
/// the instance and its files must be UIDs (PS3.5 §9.1).
fn check_attributes(
    attributes: &Attributes,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    required: &[(Tag, &'static str)],
) -> Option<Status> {
    let missing: Vec<&str> = required.iter().filter(|(_, k)| attributes.get(k).is_none()).map(|(_, k)| *k).collect();
    if !missing.is_empty() {
        return Some(Status::failure(status::MISSING_ATTRIBUTE, format!("missing {}", missing.join(", "))));
    }
    let not_a_uid = |value: &Option<String>| value.as_deref().is_some_and(|value| !uid::is_valid(value));
    if not_a_uid(&attributes.sop_instance_uid) {
        return Some(invalid_sop_instance_uid());
    }
    for (keyword, value) in
        [("StudyInstanceUID", &attributes.study_instance_uid), ("SeriesInstanceUID", &attributes.series_instance_uid)]
    {
        if not_a_uid(value) {
            return Some(Status::failure(status::INVALID_UID, format!("{keyword} is not a UID (PS3.5 9.1)")));
        }
    }
    let differs = |dataset: &Option<String>, command: &str| dataset.as_deref().is_some_and(|d| d != command);
    if differs(&attributes.sop_instance_uid, sop_instance_uid) {
        return Some(Status::failure(status::DATASET_DOES_NOT_MATCH, "SOPInstanceUID differs from the command"));
    }
    if differs(&attributes.sop_class_uid, sop_class_uid) {
        return Some(Status::failure(status::DATASET_DOES_NOT_MATCH, "SOPClassUID differs from the command"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::inflate::InflateError;

    const REQUIRED: &[(Tag, &str)] = &[(0x0020_000D, "StudyInstanceUID"), (0x0010_0020, "PatientID")];

    fn attributes() -> Attributes {
        Attributes {
            sop_class_uid: Some("1.2.840.10008.5.1.4.1.1.2".into()),
            sop_instance_uid: Some("1.2.3".into()),
            study_instance_uid: Some("1.2".into()),
            patient_id: Some("P".into()),
            ..Default::default()
        }
    }

    #[test]
    fn consistent_instance_passes() {
        assert_eq!(check_attributes(&attributes(), "1.2.840.10008.5.1.4.1.1.2", "1.2.3", REQUIRED), None);
    }

    #[test]
    fn missing_required_attributes_are_named() {
        let a = Attributes { patient_id: None, study_instance_uid: None, ..attributes() };
        let st = check_attributes(&a, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", REQUIRED).unwrap();
        assert_eq!(st.code, status::MISSING_ATTRIBUTE);
        assert_eq!(st.comment.as_deref(), Some("missing StudyInstanceUID, PatientID"));
    }

    #[test]
    fn naming_uids_must_be_uids() {
        let sop = Attributes { sop_instance_uid: Some("1.2.3/4".into()), ..attributes() };
        let st = check_attributes(&sop, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", REQUIRED).unwrap();
        assert_eq!(st.code, status::INVALID_SOP_INSTANCE);
        let study = Attributes { study_instance_uid: Some("1.2\\3".into()), ..attributes() };
        let st = check_attributes(&study, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", REQUIRED).unwrap();
        assert_eq!(
            (st.code, st.comment.as_deref()),
            (status::INVALID_UID, Some("StudyInstanceUID is not a UID (PS3.5 9.1)"))
        );
        let series = Attributes { series_instance_uid: Some("1..2".into()), ..attributes() };
        let st = check_attributes(&series, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", REQUIRED).unwrap();
        assert_eq!(st.code, status::INVALID_UID);
        assert!(st.comment.unwrap().starts_with("SeriesInstanceUID"));
        // Absent ones are the required attributes' business, not the UID check's.
        let absent = Attributes { series_instance_uid: None, ..attributes() };
        assert_eq!(check_attributes(&absent, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", REQUIRED), None);
    }

    #[test]
    fn walk_failures_are_c000_or_a701_for_our_bounds() {
        let malformed = walk_failure(&ExtractError::Malformed("dataset ends inside an element value".into()));
        assert_eq!(malformed.code, status::CANNOT_UNDERSTAND);
        assert_eq!(malformed.comment.as_deref(), Some("data set: dataset ends inside an element value"));
        let bound = walk_failure(&ExtractError::OverLimit(InflateError::RatioTooHigh { max_ratio: 200 }));
        assert_eq!(bound.code, status::INFLATE_LIMIT);
        assert_eq!(bound.comment.as_deref(), Some("inflates over 200:1 (OXIDIP_INFLATE_MAX_RATIO)"));
    }

    #[test]
    fn uid_mismatch_is_a900() {
        let st = check_attributes(&attributes(), "1.2.840.10008.5.1.4.1.1.2", "9.9.9", REQUIRED).unwrap();
        assert_eq!(st.code, status::DATASET_DOES_NOT_MATCH);
        let st = check_attributes(&attributes(), "1.2.840.10008.5.1.4.1.1.4", "1.2.3", REQUIRED).unwrap();
        assert_eq!(st.code, status::DATASET_DOES_NOT_MATCH);
    }
}
