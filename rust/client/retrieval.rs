//! A C-MOVE or C-GET in progress on an association of its own, run as a task on a tokio
//! runtime and watched from another thread (Python's, a few calls a second): its pending
//! responses queue up for `next_progress`, its user can ask for a C-CANCEL-RQ (PS3.7
//! §9.3.2.3) or an A-ABORT at any time, and its end (the final response, or why there was
//! none, in words) stays for `end`.
//!
//! The task reads the operation's responses one by one (`query_retrieve::Retrieve`), a C-GET's
//! C-STOREs stored on the way through the store path. Between two messages it waits for the
//! peer and for its user at once (`Retrieve::readable` is cancel-safe): a cancel goes out at
//! once, even to a peer silent in the middle of a sub-operation, and the responses that follow
//! (the pending ones already on their way, then the final Cancel, FE00) are read as before.
//! A peer silent longer than the idle timeout is aborted; so is one whose user asks.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::watch;

use super::query_retrieve::{Pending, Retrieve, RetrieveOutcome};
use super::{Client, ClientError, ClientOptions};
use crate::service::store::{StoreProvider, StoreService};

/// Pending responses kept for a user who does not take them: past this, the oldest go (the
/// latest counts say the most).
const MAX_QUEUED_PROGRESS: usize = 1024;

/// Which retrieve, and what its sub-operations need.
pub enum Method {
    /// C-MOVE (PS3.4 C.4.2): the peer sends the instances to the AE `destination`.
    Move { destination: String },
    /// C-GET (PS3.4 C.4.3): the instances come back on this association, stored by `service`
    /// as association `association_id` (a receiver's store path and events).
    Get { service: Arc<StoreService>, association_id: u64 },
}

/// What to retrieve, and how.
pub struct Request {
    /// The information model (e.g. `query_retrieve::STUDY_ROOT_MOVE`).
    pub model: String,
    /// The identifier, encoded in the transfer syntax of the model's accepted context.
    pub identifier: Vec<u8>,
    pub method: Method,
    /// Bound on each wait for the peer once the request is sent.
    pub idle_timeout: Duration,
}

/// How a retrieve ended.
#[derive(Debug, Clone)]
pub enum End {
    /// The final response came.
    Outcome(RetrieveOutcome),
    /// No final response: why, in words (refused, aborted, idle, transport...).
    Failed(String),
}

/// What the user asks of the task: levels, each implying the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Control {
    Run,
    Cancel,
    Abort,
}

/// What the task and its watcher share.
struct Shared {
    state: Mutex<State>,
    /// Signalled when a pending response is queued or the retrieve ends.
    changed: Condvar,
    control: watch::Sender<Control>,
}

#[derive(Default)]
struct State {
    progress: VecDeque<Pending>,
    stored: u64,
    end: Option<End>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending(&self, pending: Pending, stored: u64) {
        let mut state = self.state();
        if state.progress.len() == MAX_QUEUED_PROGRESS {
            state.progress.pop_front();
        }
        state.progress.push_back(pending);
        state.stored = stored;
        self.changed.notify_all();
    }

    fn end(&self, end: End) {
        let mut state = self.state();
        if state.end.is_none() {
            state.end = Some(end);
        }
        self.changed.notify_all();
    }
}

/// The task's end, whatever ends it: a task dropped unfinished (its runtime shut down, the
/// receiver stopping) still ends the retrieve, in words.
struct EndGuard(Arc<Shared>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.end(End::Failed("stopped: the runtime running the retrieve shut down".into()));
    }
}

/// A retrieve in progress (see the module's documentation). Dropped before its end, it
/// cancels: the peer stops sending what nobody watches.
pub struct Retrieval {
    shared: Arc<Shared>,
}

impl Retrieval {
    /// Connects to `host`:`port` with `options` (blocking the calling thread, which must not
    /// be one of `runtime`'s), checks the association can carry the retrieve, then runs it as
    /// a task on `runtime`. An error when there is no usable association (nothing to end).
    pub fn start(
        runtime: &Handle,
        host: &str,
        port: u16,
        options: ClientOptions,
        request: Request,
    ) -> Result<Retrieval, ClientError> {
        let client = runtime.block_on(connect(host, port, options, &request))?;
        let (control, _) = watch::channel(Control::Run);
        let shared = Arc::new(Shared { state: Mutex::default(), changed: Condvar::new(), control });
        runtime.spawn(run(client, request, EndGuard(shared.clone())));
        Ok(Retrieval { shared })
    }

    /// The next pending response, waiting up to `timeout`; None when none came meanwhile or
    /// the retrieve has ended (`end`) and all were taken.
    pub fn next_progress(&self, timeout: Duration) -> Option<Pending> {
        // A timeout past what a clock can hold (Python's 1e300) waits as long as it takes.
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.shared.state();
        loop {
            if let Some(pending) = state.progress.pop_front() {
                return Some(pending);
            }
            let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
            if state.end.is_some() || left.is_zero() {
                return None;
            }
            state = self.shared.changed.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Asks the task to send a C-CANCEL-RQ (once; nothing after the end).
    pub fn cancel(&self) {
        self.request(Control::Cancel);
    }

    /// Asks the task to send an A-ABORT, even in the middle of a sub-operation (a C-GET's
    /// C-STORE under way is then not stored).
    pub fn abort(&self) {
        self.request(Control::Abort);
    }

    fn request(&self, control: Control) {
        self.shared.control.send_if_modified(|current| {
            let raise = control > *current;
            if raise {
                *current = control;
            }
            raise
        });
    }

    /// How it ended, once it has.
    pub fn end(&self) -> Option<End> {
        self.shared.state().end.clone()
    }

    /// C-GET: the instances stored so far (counted at each pending response and at the end).
    pub fn stored(&self) -> u64 {
        self.shared.state().stored
    }
}

impl Drop for Retrieval {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// The association for `request`: the model accepted, and for a C-GET at least one storage
/// context where we are SCP (PS3.7 D.3.3.4), else no peer could send its instances; then
/// waits on the peer bounded by the idle timeout.
async fn connect(host: &str, port: u16, options: ClientOptions, request: &Request) -> Result<Client, ClientError> {
    let storage_proposed = options.contexts.iter().filter(|c| c.roles.scp).count();
    let mut client = Client::connect((host, port), options).await?;
    let refusal = if client.context_for(&request.model).is_none() {
        Some(format!("{} (the peer refused the information model)", request.model))
    } else if matches!(request.method, Method::Get { .. }) && !client.association().contexts().any(|c| c.roles.scp) {
        Some(format!(
            "storing the C-GET's instances: the peer accepted none of the {storage_proposed} storage SOP \
             classes proposed with us as SCP (role selection, PS3.7 D.3.3.4), so it could send none"
        ))
    } else {
        None
    };
    if let Some(refusal) = refusal {
        // Nothing was asked: a release says so politely; an abort if the peer does not answer.
        let _ = client.release().await;
        return Err(ClientError::NoContext(refusal));
    }
    client.set_idle_timeout(request.idle_timeout);
    Ok(client)
}

/// Why the task stopped before the final response.
enum Stop {
    Aborted,
    Idle,
    Failed(ClientError),
}

async fn run(mut client: Client, request: Request, guard: EndGuard) {
    let shared = &guard.0;
    let control = shared.control.subscribe();
    let Request { model, identifier, method, idle_timeout } = request;
    let stopped = match method {
        Method::Move { destination } => match client.move_to(&model, &destination, &identifier).await {
            Ok(retrieve) => drive(retrieve, shared, control, idle_timeout).await,
            Err(e) => Err(Stop::Failed(e)),
        },
        Method::Get { service, association_id } => {
            let events = service.events.clone();
            let mut store = StoreProvider::new(service, client.store_origin(association_id));
            let stopped = match client.get(&model, &identifier, &mut store).await {
                Ok(retrieve) => drive(retrieve, shared, control, idle_timeout).await,
                Err(e) => Err(Stop::Failed(e)),
            };
            store.discard_temp_files();
            // Its instances' events are all queued: no need to linger for more of them.
            events.flush();
            stopped
        }
    };
    let end = match stopped {
        Ok(outcome) => {
            // The operation is over, its instances in: a release the peer botches changes
            // nothing of that.
            let _ = client.release().await;
            End::Outcome(outcome)
        }
        Err(stop) => {
            // A failure already ended the association (`Client::fail`): aborting again
            // writes to a closed connection, harmlessly.
            client.abort().await;
            End::Failed(match stop {
                Stop::Aborted => "aborted at our request (A-ABORT) before the final response".into(),
                Stop::Idle | Stop::Failed(ClientError::Timeout) => format!(
                    "the peer sent nothing for {:.1} s (idle timeout): association aborted",
                    idle_timeout.as_secs_f64()
                ),
                Stop::Failed(e) => e.to_string(),
            })
        }
    };
    shared.end(end);
}

/// Reads the responses to the final one, queuing the pending ones, sending the C-CANCEL-RQ
/// when asked, between two messages, and stopping when aborted, even inside one.
async fn drive(
    mut retrieve: Retrieve<'_>,
    shared: &Shared,
    mut control: watch::Receiver<Control>,
    idle_timeout: Duration,
) -> Result<RetrieveOutcome, Stop> {
    let mut cancelled = false;
    loop {
        let asked = *control.borrow_and_update();
        if asked == Control::Abort {
            return Err(Stop::Aborted);
        }
        if asked == Control::Cancel && !cancelled {
            retrieve.cancel().await.map_err(Stop::Failed)?;
            cancelled = true;
        }
        let readable = tokio::select! {
            biased;
            // The sender lives in `shared`, as long as this task: never an error.
            _ = control.changed() => continue,
            readable = tokio::time::timeout(idle_timeout, retrieve.readable()) => readable,
        };
        match readable {
            Err(_elapsed) => return Err(Stop::Idle),
            Ok(Err(e)) => return Err(Stop::Failed(e)),
            Ok(Ok(())) => {}
        }
        let next = tokio::select! {
            biased;
            _ = control.wait_for(|asked| *asked == Control::Abort) => return Err(Stop::Aborted),
            next = retrieve.next_pending() => next,
        };
        match next.map_err(Stop::Failed)? {
            Some(pending) => shared.pending(pending, retrieve.stored()),
            None => {
                shared.state().stored = retrieve.stored();
                return Ok(retrieve.outcome().cloned().expect("set when next_pending returns None"));
            }
        }
    }
}
