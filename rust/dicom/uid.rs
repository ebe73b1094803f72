//! What a UID may look like (PS3.5 §9.1): the UIDs that name an instance name its files too,
//! so anything else could reach the file system as something else (`1.2.3/4` and `1.2.3\4`
//! both become `1.2.3_4` once sanitized).

/// Longest UID (PS3.5 §9.1, and the UI value representation, table 6.2-1).
const MAX_UID_LENGTH: usize = 64;

/// Whether `uid` (padding already trimmed) is a UID: components of digits separated by
/// single dots, none empty, at most 64 characters.
///
/// PS3.5 §9.1 also forbids a leading zero in a component of more than one digit. That rule is
/// broken in the wild (older modalities and toolkits wrote dates and serial numbers with
/// leading zeros), dcmtk's storescp and pydicom accept such UIDs, and a leading zero does not
/// make two UIDs collide in a file name (digits and dots are never rewritten): tolerated.
pub fn is_valid(uid: &str) -> bool {
    uid.len() <= MAX_UID_LENGTH
        && uid.split('.').all(|component| !component.is_empty() && component.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_digits_and_dots() {
        for good in ["1", "1.2.840.10008.5.1.4.1.1.2", "0.0", "2.25.329800735698586629295641978511506172918"] {
            assert!(is_valid(good), "{good}");
        }
        let longest = format!("1.{}", "2".repeat(62));
        assert!(is_valid(&longest));
        let too_long = format!("1.{}", "2".repeat(63));
        for bad in ["", ".", "1.", ".1", "1..2", "1.2.3/4", "1.2.3\\4", "1.2 .3", "1.2.3a", "１.２", &too_long] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn leading_zeros_are_tolerated() {
        assert!(is_valid("1.2.03.4"));
        assert!(is_valid("01.2"));
    }
}
