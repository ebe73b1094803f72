//! Who we are on the wire and in files: the identity every oxidip role announces, in the
//! A-ASSOCIATE user information (PS3.7 D.3.3.2, D.3.3.3) and in the File Meta Information
//! (PS3.10 §7.1). Neutral ground: the upper layer, storage, the server and the client all
//! read it, and it depends on none of them.

/// oxidip's Implementation Class UID (0002,0012; 52H sub-item): a UUID-derived UID (PS3.5
/// §B.2), generated once and fixed, so every oxidip file and association names the same
/// implementation.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.311689584696630084678798053855609497509";

/// Implementation Version Name (0002,0013; 55H sub-item), an SH: at most 16 characters.
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("OXIDIP_", env!("CARGO_PKG_VERSION"));
const _: () = assert!(IMPLEMENTATION_VERSION_NAME.len() <= 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implementation_identifiers_are_valid() {
        // A UI is at most 64 characters of digits and dots (PS3.5 §9.1); ours is even already.
        assert!(IMPLEMENTATION_CLASS_UID.len() <= 64);
        assert_eq!(IMPLEMENTATION_CLASS_UID.len() % 2, 0);
        assert!(IMPLEMENTATION_CLASS_UID.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
        assert!(IMPLEMENTATION_VERSION_NAME.starts_with("OXIDIP_"));
    }
}
