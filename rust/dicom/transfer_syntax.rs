//! Transfer syntaxes we accept (PS3.5 §10, PS3.6 table A-1) and how their datasets are encoded.

/// How a dataset is encoded on the wire. Every encapsulated transfer syntax encodes the
/// dataset itself in explicit VR little endian (PS3.5 §A.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    ImplicitLittle,
    ExplicitLittle,
    ExplicitBig,
    /// Explicit VR little endian compressed with raw deflate (RFC 1951), PS3.5 §A.5.
    DeflatedExplicitLittle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferSyntax {
    pub uid: &'static str,
    pub name: &'static str,
    pub encoding: Encoding,
    /// Pixel data is compressed (encapsulated, PS3.5 §A.4): excluded in "uncompressed only" mode.
    pub encapsulated: bool,
}

pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

const fn native(uid: &'static str, name: &'static str, encoding: Encoding) -> TransferSyntax {
    TransferSyntax { uid, name, encoding, encapsulated: false }
}

const fn encapsulated(uid: &'static str, name: &'static str) -> TransferSyntax {
    TransferSyntax { uid, name, encoding: Encoding::ExplicitLittle, encapsulated: true }
}

/// Every transfer syntax we accept, in our order of preference when a presentation context
/// proposes several: explicit VR little endian first (unambiguous VRs, no byte swapping),
/// then the other native encodings, then the encapsulated ones as the standard lists them.
pub const TRANSFER_SYNTAXES: &[TransferSyntax] = &[
    native(EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian", Encoding::ExplicitLittle),
    native(IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian", Encoding::ImplicitLittle),
    native("1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian", Encoding::DeflatedExplicitLittle),
    native("1.2.840.10008.1.2.2", "Explicit VR Big Endian", Encoding::ExplicitBig),
    encapsulated("1.2.840.10008.1.2.1.98", "Encapsulated Uncompressed Explicit VR Little Endian"),
    encapsulated("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)"),
    encapsulated("1.2.840.10008.1.2.4.51", "JPEG Extended (Process 2 & 4)"),
    encapsulated("1.2.840.10008.1.2.4.57", "JPEG Lossless, Non-Hierarchical (Process 14)"),
    encapsulated("1.2.840.10008.1.2.4.70", "JPEG Lossless, Non-Hierarchical, First-Order Prediction"),
    encapsulated("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless"),
    encapsulated("1.2.840.10008.1.2.4.81", "JPEG-LS Lossy (Near-Lossless)"),
    encapsulated("1.2.840.10008.1.2.4.90", "JPEG 2000 Image Compression (Lossless Only)"),
    encapsulated("1.2.840.10008.1.2.4.91", "JPEG 2000 Image Compression"),
    encapsulated("1.2.840.10008.1.2.4.92", "JPEG 2000 Part 2 Multi-component (Lossless Only)"),
    encapsulated("1.2.840.10008.1.2.4.93", "JPEG 2000 Part 2 Multi-component"),
    encapsulated("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile / Main Level"),
    encapsulated("1.2.840.10008.1.2.4.100.1", "Fragmentable MPEG2 Main Profile / Main Level"),
    encapsulated("1.2.840.10008.1.2.4.101", "MPEG2 Main Profile / High Level"),
    encapsulated("1.2.840.10008.1.2.4.101.1", "Fragmentable MPEG2 Main Profile / High Level"),
    encapsulated("1.2.840.10008.1.2.4.102", "MPEG-4 AVC/H.264 High Profile / Level 4.1"),
    encapsulated("1.2.840.10008.1.2.4.102.1", "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.1"),
    encapsulated("1.2.840.10008.1.2.4.103", "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1"),
    encapsulated("1.2.840.10008.1.2.4.103.1", "Fragmentable MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1"),
    encapsulated("1.2.840.10008.1.2.4.104", "MPEG-4 AVC/H.264 High Profile For 2D Video"),
    encapsulated("1.2.840.10008.1.2.4.104.1", "Fragmentable MPEG-4 AVC/H.264 High Profile For 2D Video"),
    encapsulated("1.2.840.10008.1.2.4.105", "MPEG-4 AVC/H.264 High Profile For 3D Video"),
    encapsulated("1.2.840.10008.1.2.4.105.1", "Fragmentable MPEG-4 AVC/H.264 High Profile For 3D Video"),
    encapsulated("1.2.840.10008.1.2.4.106", "MPEG-4 AVC/H.264 Stereo High Profile"),
    encapsulated("1.2.840.10008.1.2.4.106.1", "Fragmentable MPEG-4 AVC/H.264 Stereo High Profile"),
    encapsulated("1.2.840.10008.1.2.4.107", "HEVC/H.265 Main Profile / Level 5.1"),
    encapsulated("1.2.840.10008.1.2.4.108", "HEVC/H.265 Main 10 Profile / Level 5.1"),
    encapsulated("1.2.840.10008.1.2.4.110", "JPEG XL Lossless"),
    encapsulated("1.2.840.10008.1.2.4.111", "JPEG XL JPEG Recompression"),
    encapsulated("1.2.840.10008.1.2.4.112", "JPEG XL"),
    encapsulated("1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000 Image Compression (Lossless Only)"),
    encapsulated(
        "1.2.840.10008.1.2.4.202",
        "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)",
    ),
    encapsulated("1.2.840.10008.1.2.4.203", "High-Throughput JPEG 2000 Image Compression"),
    encapsulated("1.2.840.10008.1.2.5", "RLE Lossless"),
];

/// The transfer syntax with this UID, if we accept it.
pub fn lookup(uid: &str) -> Option<&'static TransferSyntax> {
    TRANSFER_SYNTAXES.iter().find(|ts| ts.uid == uid)
}

/// Our preference rank of a transfer syntax (lower is better), if we accept it.
pub fn preference(uid: &str) -> Option<usize> {
    TRANSFER_SYNTAXES.iter().position(|ts| ts.uid == uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_little_endian_is_preferred() {
        assert_eq!(preference(EXPLICIT_VR_LITTLE_ENDIAN), Some(0));
        assert!(preference(IMPLICIT_VR_LITTLE_ENDIAN) < preference("1.2.840.10008.1.2.4.50"));
    }

    #[test]
    fn uids_are_unique() {
        for (i, ts) in TRANSFER_SYNTAXES.iter().enumerate() {
            assert_eq!(preference(ts.uid), Some(i), "{} listed twice", ts.uid);
        }
    }

    #[test]
    fn deflate_and_big_endian_are_native() {
        let deflated = lookup("1.2.840.10008.1.2.1.99").unwrap();
        assert_eq!(deflated.encoding, Encoding::DeflatedExplicitLittle);
        assert!(!deflated.encapsulated);
        assert_eq!(lookup("1.2.840.10008.1.2.2").unwrap().encoding, Encoding::ExplicitBig);
        assert!(lookup("1.2.840.10008.1.2.4.50").unwrap().encapsulated);
        assert!(lookup("1.2.3").is_none());
    }
}
