//! The process's open-files limit (RLIMIT_NOFILE) and what the association limit needs of it.
//!
//! Each association holds a socket and a temp file, so with the common soft limit of 1024 a
//! receiver stopped answering at ~507 associations, silently. At start the soft limit is
//! raised to the hard one (what any process may do for itself), and a warning is reported
//! when even that cannot hold OXIDIP_MAX_ASSOCIATIONS associations. What happens when the
//! descriptors run out anyway is the listener's business (`listener::SpareDescriptor`).

use std::io;

use crate::events::ServerWarning;

/// Descriptors one association holds at most: its socket and the temp file of the instance
/// it is receiving (or of the next one, made ahead).
const DESCRIPTORS_PER_ASSOCIATION: u64 = 2;
/// Descriptors the rest of the process holds: Python and its libraries, the registry and its
/// connections, the journal, the listener, the runtime, the logs.
const DESCRIPTORS_FOR_THE_PROCESS: u64 = 64;

/// Descriptors `max_associations` associations need with the rest of the process.
pub fn needed(max_associations: usize) -> u64 {
    (max_associations as u64).saturating_mul(DESCRIPTORS_PER_ASSOCIATION).saturating_add(DESCRIPTORS_FOR_THE_PROCESS)
}

/// Raises the soft open-files limit to the hard limit; a warning when the limit cannot hold
/// `max_associations` associations (or cannot be read).
pub fn raise_limit(max_associations: usize) -> Option<ServerWarning> {
    let needed = needed(max_associations);
    match raise_soft_limit() {
        Ok(limit) if limit >= needed => None,
        Ok(limit) => Some(ServerWarning {
            message: "open-files limit too low for OXIDIP_MAX_ASSOCIATIONS".into(),
            detail: format!(
                "the open-files limit (RLIMIT_NOFILE) is {limit} even raised to its hard limit; \
                 {max_associations} associations need about {needed} ({DESCRIPTORS_PER_ASSOCIATION} each, \
                 {DESCRIPTORS_FOR_THE_PROCESS} for the process): connections past what fits are refused \
                 with A-ASSOCIATE-RJ. Raise the hard limit (`ulimit -Hn`, the service's LimitNOFILE, \
                 the container's nofile ulimit) or lower OXIDIP_MAX_ASSOCIATIONS"
            ),
        }),
        Err(e) => Some(ServerWarning {
            message: "open-files limit unknown".into(),
            detail: format!("getrlimit(RLIMIT_NOFILE) failed: {e}"),
        }),
    }
}

/// The soft limit after raising it to the hard limit (left as it was if that fails).
fn raise_soft_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads one rlimit through a valid pointer. It may refuse (macOS
        // caps the soft limit below an infinite hard one): the old limit then stands.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_only_when_the_raised_limit_cannot_hold_the_associations() {
        assert_eq!(needed(1000), 2064);
        // The test process raises its own limit: it only ever goes up, to the hard limit.
        let limit = raise_soft_limit().unwrap();
        for associations in [1, 1 << 40] {
            let warning = raise_limit(associations);
            assert_eq!(warning.is_some(), limit < needed(associations), "{associations}: {warning:?}");
            if let Some(warning) = warning {
                assert_eq!(warning.message, "open-files limit too low for OXIDIP_MAX_ASSOCIATIONS");
            }
        }
    }
}
