//! One job on one association: connect to its destination proposing the job's contexts,
//! send its items in order (each file prepared while the peer handles the item before it),
//! report each item's outcome as it comes, and release (PS3.8 §7.2) at the end; or stop
//! early, on a failure of the association, an A7xx answer, `cancel` or `stop`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::classify::{self, Stage, StoreVerdict};
use super::control::{Halt, HaltWatch};
use super::job::{ForwardItem, ForwardJob};
use super::outcome::{DeliveryResult, JobEndKind, JobReporter};
use super::stored::{self, Prepared};
use crate::client::{Client, ClientError, ClientOptions};

/// What every job of an engine shares.
pub struct Settings {
    pub timeout: Duration,
    pub max_pdu_length: u32,
    /// The global bound on associations at once.
    pub associations: Arc<Semaphore>,
}

/// Runs `job` to its end; every outcome goes to `reporter`, which ends with the job.
pub async fn run(job: ForwardJob, settings: Arc<Settings>, mut halt: HaltWatch, reporter: JobReporter) {
    let (end, error) = forward(&job, &settings, &mut halt, &reporter).await;
    reporter.end(end, error);
}

/// Why a job ended on a request, in words.
fn halted(level: Halt) -> String {
    match level {
        Halt::Run => unreachable!("a job ends on a request only once halted"),
        Halt::Stop => "stopped: the forwarder is shutting down".into(),
        Halt::Cancel => "cancelled".into(),
        Halt::Abort => "stopped: the forwarder's stop timeout passed (association aborted)".into(),
    }
}

async fn forward(
    job: &ForwardJob,
    settings: &Settings,
    halt: &mut HaltWatch,
    reporter: &JobReporter,
) -> (JobEndKind, String) {
    let cancelled = |level| (JobEndKind::Cancelled, halted(level));
    if halt.level() > Halt::Run {
        return cancelled(halt.level());
    }
    // Waiting for room, or for the association: any halt ends the job, nothing was sent.
    let _permit = tokio::select! {
        permit = settings.associations.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        level = halt.reaches(Halt::Stop) => return cancelled(level),
    };
    let destination = &job.destination;
    let address = destination.address();
    let options = ClientOptions {
        max_pdu_length: settings.max_pdu_length,
        timeout: settings.timeout,
        ..ClientOptions::new(&destination.calling_aet, &destination.called_aet, job.contexts())
    };
    let connected = tokio::select! {
        connected = Client::connect((destination.host.as_str(), destination.port), options) => connected,
        level = halt.reaches(Halt::Stop) => return cancelled(level),
    };
    let mut client = match connected {
        Ok(client) => client,
        Err(e) => return classify::association_failure(&e, &address, settings.timeout, Stage::Connecting),
    };
    let chunk = client.chunk_len();
    let total = job.items.len();
    let prepare = |item: &ForwardItem| stored::prepare(item, chunk);
    let mut next = job.items.first().map(prepare);
    for (done, item) in job.items.iter().enumerate() {
        let preparing = next.take().expect("prepared one ahead");
        let upcoming = job.items.get(done + 1);
        let level = halt.level();
        if level == Halt::Stop {
            let _ = client.release().await;
            return cancelled(level);
        }
        if level > Halt::Stop {
            client.abort().await;
            return cancelled(level);
        }
        if client.context_in(&item.sop_class_uid, &item.transfer_syntax).is_none() {
            let words = classify::no_context(&item.sop_class_uid, &item.transfer_syntax);
            reporter.item(item.item_id, DeliveryResult::Failed, None, words);
            next = upcoming.map(prepare);
            continue;
        }
        let mut prepared = match preparing {
            Ok(prepared) => prepared,
            Err(words) => {
                reporter.item(item.item_id, DeliveryResult::Failed, None, words);
                next = upcoming.map(prepare);
                continue;
            }
        };
        // The file's own SOP class and syntax: what its bytes are (a duplicate received
        // since may have replaced the file the registry described).
        let (sop_class, syntax) =
            (prepared.data_set.sop_class_uid.clone(), prepared.data_set.transfer_syntax_uid.clone());
        if client.context_in(&sop_class, &syntax).is_none() {
            reporter.item(item.item_id, DeliveryResult::Failed, None, classify::no_context(&sop_class, &syntax));
            next = upcoming.map(prepare);
            continue;
        }
        // The next file is prepared while this item is with the peer: `join` polls the store
        // first, which writes the request and then waits for the response; the preparation
        // then runs on this thread, overlapping the peer's work without a hop to another
        // thread and back (on a busy machine those wake-ups cost more than the reads, which
        // are bounded: a file's head and its first chunk). Mid-item, only a cancel or the
        // stop timeout interrupts (`stop` lets it finish).
        let (sent, following) = tokio::select! {
            both = async { tokio::join!(store(&mut client, &mut prepared), async { upcoming.map(prepare) }) } => both,
            level = halt.reaches(Halt::Cancel) => {
                client.abort().await;
                return cancelled(level);
            }
        };
        next = following;
        match sent {
            Ok(status) => match classify::store_status(status.code) {
                StoreVerdict::Item(result) => {
                    reporter.item(item.item_id, result, Some(status.code), classify::item_comment(&status))
                }
                StoreVerdict::StopJob => {
                    let _ = client.release().await;
                    return (JobEndKind::Transient, classify::out_of_resources(&status));
                }
            },
            Err(e) => {
                // The association is gone (the client aborted or closed it).
                if let Some(failure) = prepared.read_failure() {
                    let words = classify::unreadable(&item.path, failure);
                    reporter.item(item.item_id, DeliveryResult::Failed, None, format!("{words} (while sending)"));
                    let stage = Stage::Sending { done: done + 1, total };
                    return (
                        JobEndKind::Transient,
                        format!("association ended{stage}: a file failed to read while sending"),
                    );
                }
                return classify::association_failure(&e, &address, settings.timeout, Stage::Sending { done, total });
            }
        }
    }
    // Every item has its outcome; a release that fails changes none of them.
    let _ = client.release().await;
    (JobEndKind::Ok, String::new())
}

async fn store(client: &mut Client, prepared: &mut Prepared) -> Result<crate::dimse::status::Status, ClientError> {
    let data_set = prepared.data_set.clone();
    client
        .store_from_reader(
            &data_set.sop_class_uid,
            &data_set.transfer_syntax_uid,
            &data_set.sop_instance_uid,
            prepared.reader(),
            data_set.len,
        )
        .await
}
