//! Wall-clock times as they cross to Python: seconds since the Unix epoch, as `time.time()`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch; 0 for a time before it.
pub fn unix_time(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
