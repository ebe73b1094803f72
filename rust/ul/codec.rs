//! Reading and writing PDUs (PS3.8 §9.3) from and to byte buffers.
//!
//! `decode` is written for a framed reader: it looks at the front of a receive buffer, tells
//! whether a whole PDU is there, and checks the PDU header before the body arrives so that a
//! peer cannot make us buffer more than we announced. P-DATA-TF payloads are never copied:
//! each `Pdv` holds a slice of the received buffer.
//!
//! Leniency follows PS3.8: reserved fields are not tested, unknown items and sub-items are
//! skipped, and values the association layer can answer with a proper A-ASSOCIATE-RJ or a
//! rejected presentation context (a wrong application context name, a missing abstract
//! syntax) are passed on rather than treated as errors. What is an error is a length
//! structure that does not add up, a value we cannot represent, and an item that PS3.8 allows
//! only elsewhere or only once: those end the association with an A-ABORT.

use bytes::{BufMut, Bytes, BytesMut};

use crate::ul::pdu::*;

/// Bytes of the PDU header: type (1), reserved (1), length (4, big endian).
pub const PDU_HEADER_LEN: usize = 6;
/// Largest PDU other than P-DATA-TF we accept (an A-ASSOCIATE-RQ with hundreds of
/// presentation contexts fits easily); protects memory against lying length fields.
pub const MAX_CONTROL_PDU_LEN: u32 = 1 << 20;

/// A-ASSOCIATE-RQ/AC fixed fields: protocol version (2), reserved (2), called AE title (16),
/// calling AE title (16), reserved (32) (PS3.8 §9.3.2, §9.3.3).
const AE_TITLE_LEN: usize = 16;
const ASSOCIATE_RESERVED_LEN: usize = 32;
/// PDV item header: length (4), presentation context ID (1), message control header (1)
/// (PS3.8 §9.3.5.1). The length counts the last two.
const PDV_HEADER_LEN: usize = 6;
/// Item and sub-item header: type (1), reserved (1), length (2) (PS3.8 §9.3.2).
const ITEM_HEADER_LEN: usize = 4;

// Item types of the A-ASSOCIATE variable fields (PS3.8 §9.3.2, §9.3.3, PS3.7 annex D.3.3).
// 56H/57H (SOP class (common) extended negotiation) are not listed: we skip them like any
// unknown sub-item, since we offer no extended negotiation.
const APPLICATION_CONTEXT: u8 = 0x10;
const PRESENTATION_CONTEXT_RQ: u8 = 0x20;
const PRESENTATION_CONTEXT_AC: u8 = 0x21;
const ABSTRACT_SYNTAX: u8 = 0x30;
const TRANSFER_SYNTAX: u8 = 0x40;
const USER_INFORMATION: u8 = 0x50;
const MAXIMUM_LENGTH: u8 = 0x51;
const IMPLEMENTATION_CLASS_UID: u8 = 0x52;
const ASYNC_OPERATIONS_WINDOW: u8 = 0x53;
const ROLE_SELECTION: u8 = 0x54;
const IMPLEMENTATION_VERSION_NAME: u8 = 0x55;
const USER_IDENTITY_RQ: u8 = 0x58;
const USER_IDENTITY_AC: u8 = 0x59;

/// Message control header bits of a PDV (PS3.8 annex E.2).
const MCH_COMMAND: u8 = 0b01;
const MCH_LAST: u8 = 0b10;

/// Why a PDU could not be decoded. Every variant maps to an A-ABORT reason
/// (`abort_reason`); the source of that A-ABORT is always the service provider (2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The PDU type is none of the seven of PS3.8 §9.3.1.
    UnrecognizedPdu { pdu_type: u8 },
    /// The PDU length field exceeds what we accept for that type (`max_pdata_len` for
    /// P-DATA-TF, `MAX_CONTROL_PDU_LEN` for A-ASSOCIATE-RQ/AC, 4 for the fixed-size PDUs).
    PduTooLong { pdu_type: u8, length: u32, limit: u32 },
    /// A length field that does not add up: longer than its parent, shorter than the fixed
    /// fields it must hold, or not matching the fields inside. `field` names the PDU, item or
    /// sub-item as PS3.8 does.
    InvalidLength { field: &'static str },
    /// A field holding a value outside its defined range.
    InvalidValue { field: &'static str, value: u8 },
    /// A known item where PS3.8 does not allow it (a presentation context item of the other
    /// A-ASSOCIATE PDU) or repeated where PS3.8 allows only one.
    UnexpectedItem { parent: &'static str, item_type: u8 },
}

impl CodecError {
    /// The A-ABORT reason (PS3.8 table 9-26) the provider sends for this error:
    /// 1 unrecognized PDU, 2 unexpected PDU, 4 unrecognized PDU parameter,
    /// 5 unexpected PDU parameter, 6 invalid PDU parameter value.
    ///
    /// The codec itself never produces 2 (that is the state machine's call) nor 4 (unknown
    /// items are skipped, PS3.8 §9.3 leniency).
    pub fn abort_reason(&self) -> u8 {
        match self {
            CodecError::UnrecognizedPdu { .. } => abort::REASON_UNRECOGNIZED_PDU,
            CodecError::UnexpectedItem { .. } => abort::REASON_UNEXPECTED_PDU_PARAMETER,
            CodecError::PduTooLong { .. } | CodecError::InvalidLength { .. } | CodecError::InvalidValue { .. } => {
                abort::REASON_INVALID_PDU_PARAMETER_VALUE
            }
        }
    }
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::UnrecognizedPdu { pdu_type } => {
                write!(f, "unrecognized PDU type {pdu_type:02X}H")
            }
            CodecError::PduTooLong { pdu_type, length, limit } => {
                let name = PduType::from_code(*pdu_type).map_or("PDU", PduType::name);
                write!(f, "{name} of {length} bytes exceeds the limit of {limit}")
            }
            CodecError::InvalidLength { field } => write!(f, "invalid length in {field}"),
            CodecError::InvalidValue { field, value } => {
                write!(f, "invalid value {value} in {field}")
            }
            CodecError::UnexpectedItem { parent, item_type } => {
                write!(f, "unexpected item {item_type:02X}H in {parent}")
            }
        }
    }
}

impl std::error::Error for CodecError {}

/// PDU types (PS3.8 §9.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PduType {
    AssociateRq = 0x01,
    AssociateAc = 0x02,
    AssociateRj = 0x03,
    PDataTf = 0x04,
    ReleaseRq = 0x05,
    ReleaseRp = 0x06,
    Abort = 0x07,
}

impl PduType {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x01 => PduType::AssociateRq,
            0x02 => PduType::AssociateAc,
            0x03 => PduType::AssociateRj,
            0x04 => PduType::PDataTf,
            0x05 => PduType::ReleaseRq,
            0x06 => PduType::ReleaseRp,
            0x07 => PduType::Abort,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            PduType::AssociateRq => "A-ASSOCIATE-RQ",
            PduType::AssociateAc => "A-ASSOCIATE-AC",
            PduType::AssociateRj => "A-ASSOCIATE-RJ",
            PduType::PDataTf => "P-DATA-TF",
            PduType::ReleaseRq => "A-RELEASE-RQ",
            PduType::ReleaseRp => "A-RELEASE-RP",
            PduType::Abort => "A-ABORT",
        }
    }

    /// The largest length field we accept. A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT have
    /// a fixed 4-byte body (PS3.8 §9.3.4, §9.3.6, §9.3.7, §9.3.8).
    fn length_limit(self, max_pdata_len: u32) -> u32 {
        match self {
            PduType::AssociateRq | PduType::AssociateAc => MAX_CONTROL_PDU_LEN,
            PduType::PDataTf => max_pdata_len,
            PduType::AssociateRj | PduType::ReleaseRq | PduType::ReleaseRp | PduType::Abort => 4,
        }
    }
}

/// Parses one PDU from the front of `buf`, removing its bytes. Ok(None) when `buf` does not
/// hold a whole PDU yet (nothing consumed). The header is checked as soon as its 6 bytes are
/// there: an unknown PDU type, or a length over the limit (`max_pdata_len` for P-DATA-TF,
/// MAX_CONTROL_PDU_LEN for the others) is an error at once, without waiting for the body, so
/// a lying length never makes us buffer.
/// P-DATA-TF PDV data must be zero-copy: split the PDU off with `buf.split_to(..).freeze()`
/// and slice the `Bytes` for each Pdv.
///
/// `max_pdata_len` is the maximum length we announced (51H); "unlimited" (0 on the wire) must
/// be turned into a real bound by the caller. After an error the stream cannot be
/// resynchronized and the association must be aborted; what is left in `buf` is then
/// meaningless.
pub fn decode(buf: &mut BytesMut, max_pdata_len: u32) -> Result<Option<Pdu>, CodecError> {
    let Some(&[code, _reserved, l0, l1, l2, l3]) = buf.first_chunk::<PDU_HEADER_LEN>() else {
        return Ok(None);
    };
    let length = u32::from_be_bytes([l0, l1, l2, l3]);
    let pdu_type = PduType::from_code(code).ok_or(CodecError::UnrecognizedPdu { pdu_type: code })?;
    let limit = pdu_type.length_limit(max_pdata_len);
    if length > limit {
        return Err(CodecError::PduTooLong { pdu_type: code, length, limit });
    }
    // Saturating: on 32-bit targets a length near u32::MAX plus the header overflows usize;
    // such a PDU then never completes instead of panicking.
    let pdu_len = PDU_HEADER_LEN.saturating_add(usize::try_from(length).unwrap_or(usize::MAX));
    if buf.len() < pdu_len {
        return Ok(None);
    }
    let body = buf.split_to(pdu_len).freeze().slice(PDU_HEADER_LEN..);
    decode_body(pdu_type, body).map(Some)
}

fn decode_body(pdu_type: PduType, body: Bytes) -> Result<Pdu, CodecError> {
    let name = pdu_type.name();
    Ok(match pdu_type {
        PduType::AssociateRq => Pdu::AssociateRq(decode_associate_rq(&body)?),
        PduType::AssociateAc => Pdu::AssociateAc(decode_associate_ac(&body)?),
        PduType::AssociateRj => {
            let [_, result, source, reason] = fixed_body(&body, name)?;
            Pdu::AssociateRj(AssociateRj { result, source, reason })
        }
        PduType::PDataTf => Pdu::PData(decode_p_data(body)?),
        PduType::ReleaseRq => {
            fixed_body(&body, name)?;
            Pdu::ReleaseRq
        }
        PduType::ReleaseRp => {
            fixed_body(&body, name)?;
            Pdu::ReleaseRp
        }
        PduType::Abort => {
            let [_, _, source, reason] = fixed_body(&body, name)?;
            Pdu::Abort(Abort { source, reason })
        }
    })
}

/// The 4-byte body of A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT.
fn fixed_body(body: &[u8], name: &'static str) -> Result<[u8; 4], CodecError> {
    <[u8; 4]>::try_from(body).map_err(|_| CodecError::InvalidLength { field: name })
}

/// The PDV items of a P-DATA-TF (PS3.8 §9.3.5): their lengths must add up exactly to the
/// PDU's, and there must be at least one. Checked here, in one pass that allocates nothing, so
/// that `PData::iter` can hand them out later without checking again.
fn decode_p_data(body: Bytes) -> Result<PData, CodecError> {
    let mut rest = &body[..];
    if rest.is_empty() {
        return Err(CodecError::InvalidLength { field: "P-DATA-TF" });
    }
    while !rest.is_empty() {
        let (_, _, data_len) = pdv_header(rest).ok_or(CodecError::InvalidLength { field: "PDV item" })?;
        rest = &rest[PDV_HEADER_LEN + data_len..];
    }
    Ok(PData { items: body })
}

/// Context ID, message control header and data length of the PDV item at the front of
/// `items`, if its header and data fit there. The item length counts the context ID and the
/// message control header, so it is at least 2 (PS3.8 §9.3.5.1).
fn pdv_header(items: &[u8]) -> Option<(u8, u8, usize)> {
    let &[l0, l1, l2, l3, context_id, message_control_header] = items.first_chunk::<PDV_HEADER_LEN>()?;
    let data_len = usize::try_from(u32::from_be_bytes([l0, l1, l2, l3]))
        .ok()?
        .checked_sub(2)
        .filter(|&len| len <= items.len() - PDV_HEADER_LEN)?;
    Some((context_id, message_control_header, data_len))
}

impl PData {
    /// A P-DATA-TF carrying `pdvs`, to send. A PDV over 4 GiB cannot be expressed and is left
    /// out (its PDU could not be either).
    pub fn new(pdvs: &[Pdv]) -> PData {
        let mut items = BytesMut::with_capacity(pdvs.iter().map(|pdv| PDV_HEADER_LEN + pdv.data.len()).sum());
        pdvs.iter().for_each(|pdv| put_pdv(&mut items, pdv));
        PData { items: items.freeze() }
    }

    /// The PDVs in order; each one's data is a slice of the received PDU, never copied.
    pub fn iter(&self) -> Pdvs {
        self.clone().into_iter()
    }
}

impl IntoIterator for PData {
    type Item = Pdv;
    type IntoIter = Pdvs;

    /// The PDVs in order, owning the PDU: a reader can keep the rest of a P-DATA-TF between
    /// messages (`dimse::channel`).
    fn into_iter(self) -> Pdvs {
        Pdvs { items: self.items, offset: 0 }
    }
}

/// The PDVs of a `PData`, read as they are asked for.
#[derive(Debug)]
pub struct Pdvs {
    items: Bytes,
    offset: usize,
}

impl Pdvs {
    /// No PDV left (what `next` would say, without taking one).
    pub fn is_exhausted(&self) -> bool {
        self.items.get(self.offset..).and_then(pdv_header).is_none()
    }
}

impl Iterator for Pdvs {
    type Item = Pdv;

    fn next(&mut self) -> Option<Pdv> {
        // The items were checked when the PDU was decoded (or built by `PData::new`): a
        // header that does not fit can only be the end.
        let (context_id, message_control_header, data_len) = pdv_header(self.items.get(self.offset..)?)?;
        let start = self.offset + PDV_HEADER_LEN;
        self.offset = start + data_len;
        Some(Pdv {
            context_id,
            is_command: message_control_header & MCH_COMMAND != 0,
            is_last: message_control_header & MCH_LAST != 0,
            data: self.items.slice(start..self.offset),
        })
    }
}

/// What A-ASSOCIATE-RQ and -AC share (PS3.8 §9.3.2, §9.3.3); `P` is the presentation context
/// item, the one part that differs.
struct Associate<P> {
    protocol_version: u16,
    called_ae_title: String,
    calling_ae_title: String,
    application_context: String,
    presentation_contexts: Vec<P>,
    user_information: UserInformation,
}

fn decode_associate_rq(body: &[u8]) -> Result<AssociateRq, CodecError> {
    let a = decode_associate::<PresentationContextRq>(body, PduType::AssociateRq.name())?;
    Ok(AssociateRq {
        protocol_version: a.protocol_version,
        called_ae_title: a.called_ae_title,
        calling_ae_title: a.calling_ae_title,
        application_context: a.application_context,
        presentation_contexts: a.presentation_contexts,
        user_information: a.user_information,
    })
}

fn decode_associate_ac(body: &[u8]) -> Result<AssociateAc, CodecError> {
    let a = decode_associate::<PresentationContextAc>(body, PduType::AssociateAc.name())?;
    Ok(AssociateAc {
        protocol_version: a.protocol_version,
        called_ae_title: a.called_ae_title,
        calling_ae_title: a.calling_ae_title,
        application_context: a.application_context,
        presentation_contexts: a.presentation_contexts,
        user_information: a.user_information,
    })
}

/// Fixed fields, then the variable items. A missing application context or user information
/// item is left empty rather than rejected: the association layer answers those with an
/// A-ASSOCIATE-RJ, which tells the peer more than an A-ABORT would.
fn decode_associate<P: PresentationContextItem>(body: &[u8], name: &'static str) -> Result<Associate<P>, CodecError> {
    let invalid = || CodecError::InvalidLength { field: name };
    let [v0, v1, _, _, rest @ ..] = body else {
        return Err(invalid());
    };
    let (called, rest) = rest.split_at_checked(AE_TITLE_LEN).ok_or_else(invalid)?;
    let (calling, rest) = rest.split_at_checked(AE_TITLE_LEN).ok_or_else(invalid)?;
    let variable = rest.get(ASSOCIATE_RESERVED_LEN..).ok_or_else(invalid)?;

    let mut application_context = None;
    let mut presentation_contexts = Vec::new();
    let mut user_information = None;
    for item in Items::new(variable, name) {
        let item = item?;
        match item.item_type {
            APPLICATION_CONTEXT => {
                set_once(&mut application_context, decode_uid(item.body), name, APPLICATION_CONTEXT)?
            }
            t if t == P::ITEM_TYPE => presentation_contexts.push(P::decode(item.body)?),
            PRESENTATION_CONTEXT_RQ | PRESENTATION_CONTEXT_AC => {
                return Err(CodecError::UnexpectedItem { parent: name, item_type: item.item_type })
            }
            USER_INFORMATION => {
                set_once(&mut user_information, decode_user_information(item.body)?, name, USER_INFORMATION)?
            }
            // PS3.8 §9.3.2: be lenient with items we do not know.
            _ => {}
        }
    }
    Ok(Associate {
        protocol_version: u16::from_be_bytes([*v0, *v1]),
        called_ae_title: decode_ae_title(called),
        calling_ae_title: decode_ae_title(calling),
        application_context: application_context.unwrap_or_default(),
        presentation_contexts,
        user_information: user_information.unwrap_or_default(),
    })
}

/// The presentation context item of an A-ASSOCIATE-RQ (20H) or -AC (21H).
trait PresentationContextItem: Sized {
    const ITEM_TYPE: u8;
    fn decode(body: &[u8]) -> Result<Self, CodecError>;
}

impl PresentationContextItem for PresentationContextRq {
    const ITEM_TYPE: u8 = PRESENTATION_CONTEXT_RQ;

    /// ID (1), three reserved bytes, then one abstract syntax sub-item and one or more
    /// transfer syntax sub-items (PS3.8 §9.3.2.2). A missing abstract syntax is left empty:
    /// the association layer rejects that context (result 3) instead of aborting everything.
    fn decode(body: &[u8]) -> Result<Self, CodecError> {
        const NAME: &str = "presentation context item (20H)";
        let [id, _, _, _, sub_items @ ..] = body else {
            return Err(CodecError::InvalidLength { field: NAME });
        };
        let mut abstract_syntax = None;
        let mut transfer_syntaxes = Vec::new();
        for item in Items::new(sub_items, NAME) {
            let item = item?;
            match item.item_type {
                ABSTRACT_SYNTAX => set_once(&mut abstract_syntax, decode_uid(item.body), NAME, ABSTRACT_SYNTAX)?,
                TRANSFER_SYNTAX => transfer_syntaxes.push(decode_uid(item.body)),
                _ => {}
            }
        }
        Ok(PresentationContextRq { id: *id, abstract_syntax: abstract_syntax.unwrap_or_default(), transfer_syntaxes })
    }
}

impl PresentationContextItem for PresentationContextAc {
    const ITEM_TYPE: u8 = PRESENTATION_CONTEXT_AC;

    /// ID (1), reserved (1), result/reason (1), reserved (1), then one transfer syntax
    /// sub-item (PS3.8 §9.3.3.2). The transfer syntax is not significant unless the result is
    /// acceptance, so a missing one is left empty.
    fn decode(body: &[u8]) -> Result<Self, CodecError> {
        const NAME: &str = "presentation context item (21H)";
        let [id, _, result, _, sub_items @ ..] = body else {
            return Err(CodecError::InvalidLength { field: NAME });
        };
        let mut transfer_syntax = None;
        for item in Items::new(sub_items, NAME) {
            let item = item?;
            if item.item_type == TRANSFER_SYNTAX {
                set_once(&mut transfer_syntax, decode_uid(item.body), NAME, TRANSFER_SYNTAX)?;
            }
        }
        Ok(PresentationContextAc {
            id: *id,
            result: decode_result(*result)?,
            transfer_syntax: transfer_syntax.unwrap_or_default(),
        })
    }
}

/// Result/reason of a presentation context item (PS3.8 table 9-18).
fn decode_result(value: u8) -> Result<PresentationContextResult, CodecError> {
    Ok(match value {
        0 => PresentationContextResult::Acceptance,
        1 => PresentationContextResult::UserRejection,
        2 => PresentationContextResult::NoReason,
        3 => PresentationContextResult::AbstractSyntaxNotSupported,
        4 => PresentationContextResult::TransferSyntaxesNotSupported,
        _ => return Err(CodecError::InvalidValue { field: "presentation context result", value }),
    })
}

/// User information sub-items (PS3.8 §9.3.2.3, PS3.7 annex D.3.3). Both user identity
/// sub-items are read whichever PDU carries them, since `UserInformation` serves both.
fn decode_user_information(body: &[u8]) -> Result<UserInformation, CodecError> {
    const NAME: &str = "user information item (50H)";
    let mut info = UserInformation::default();
    for item in Items::new(body, NAME) {
        let Item { item_type, body } = item?;
        match item_type {
            MAXIMUM_LENGTH => {
                let [a, b, c, d] = exact_body(body, "maximum length sub-item (51H)")?;
                set_once(&mut info.max_pdu_length, u32::from_be_bytes([a, b, c, d]), NAME, item_type)?
            }
            IMPLEMENTATION_CLASS_UID => {
                set_once(&mut info.implementation_class_uid, decode_uid(body), NAME, item_type)?
            }
            ASYNC_OPERATIONS_WINDOW => {
                let [a, b, c, d] = exact_body(body, "asynchronous operations window sub-item (53H)")?;
                let window = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
                set_once(&mut info.async_ops_window, window, NAME, item_type)?
            }
            ROLE_SELECTION => info.role_selections.push(decode_role_selection(body)?),
            IMPLEMENTATION_VERSION_NAME => {
                set_once(&mut info.implementation_version_name, decode_uid(body), NAME, item_type)?
            }
            USER_IDENTITY_RQ => set_once(&mut info.user_identity, decode_user_identity(body)?, NAME, item_type)?,
            USER_IDENTITY_AC => {
                let response = decode_user_identity_response(body)?;
                set_once(&mut info.user_identity_response, response, NAME, item_type)?
            }
            // PS3.7 D.3.3: unknown sub-items, and 56H/57H which we do not negotiate, are
            // ignored.
            _ => {}
        }
    }
    Ok(info)
}

/// A sub-item body of fixed size.
fn exact_body<const N: usize>(body: &[u8], field: &'static str) -> Result<[u8; N], CodecError> {
    <[u8; N]>::try_from(body).map_err(|_| CodecError::InvalidLength { field })
}

/// UID length (2), SOP class UID, SCU role (1), SCP role (1) (PS3.7 D.3.3.4). Role values
/// other than 0 and 1 are not defined; we read any non-zero value as support.
fn decode_role_selection(body: &[u8]) -> Result<RoleSelection, CodecError> {
    let invalid = || CodecError::InvalidLength { field: "SCP/SCU role selection sub-item (54H)" };
    let (uid, rest) = split_u16_prefixed(body).ok_or_else(invalid)?;
    let [scu_role, scp_role] = *rest else {
        return Err(invalid());
    };
    Ok(RoleSelection { sop_class_uid: decode_uid(uid), scu_role: scu_role != 0, scp_role: scp_role != 0 })
}

/// Identity type (1), positive response requested (1), primary field with its 2-byte length,
/// secondary field with its 2-byte length (present, possibly 0, for every type)
/// (PS3.7 D.3.3.7.1).
fn decode_user_identity(body: &[u8]) -> Result<UserIdentity, CodecError> {
    let invalid = || CodecError::InvalidLength { field: "user identity sub-item (58H)" };
    let [identity_type, positive_response, rest @ ..] = body else {
        return Err(invalid());
    };
    let (primary, rest) = split_u16_prefixed(rest).ok_or_else(invalid)?;
    let (secondary, rest) = split_u16_prefixed(rest).ok_or_else(invalid)?;
    if !rest.is_empty() {
        return Err(invalid());
    }
    Ok(UserIdentity {
        identity_type: *identity_type,
        positive_response_requested: *positive_response != 0,
        primary_field: primary.to_vec(),
        secondary_field: secondary.to_vec(),
    })
}

/// Server response with its 2-byte length (PS3.7 D.3.3.7.2).
fn decode_user_identity_response(body: &[u8]) -> Result<Vec<u8>, CodecError> {
    match split_u16_prefixed(body) {
        Some((response, [])) => Ok(response.to_vec()),
        _ => Err(CodecError::InvalidLength { field: "user identity sub-item (59H)" }),
    }
}

/// Splits a field preceded by its 2-byte big endian length off the front of `bytes`.
fn split_u16_prefixed(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let [l0, l1, rest @ ..] = bytes else {
        return None;
    };
    rest.split_at_checked(usize::from(u16::from_be_bytes([*l0, *l1])))
}

/// Stores the value of an item PS3.8 allows once; a second one is an unexpected parameter.
fn set_once<T>(slot: &mut Option<T>, value: T, parent: &'static str, item_type: u8) -> Result<(), CodecError> {
    match slot.replace(value) {
        None => Ok(()),
        Some(_) => Err(CodecError::UnexpectedItem { parent, item_type }),
    }
}

/// One item or sub-item: type (1), reserved (1), length (2), body (PS3.8 §9.3.2).
struct Item<'a> {
    item_type: u8,
    body: &'a [u8],
}

/// The items filling the variable part of a PDU or item. Yields an error, then stops, when
/// an item header or body does not fit in what is left of its parent.
struct Items<'a> {
    rest: &'a [u8],
    parent: &'static str,
}

impl<'a> Items<'a> {
    fn new(bytes: &'a [u8], parent: &'static str) -> Self {
        Items { rest: bytes, parent }
    }

    fn split_item(&self) -> Result<(Item<'a>, &'a [u8]), CodecError> {
        let Some((&[item_type, _reserved, l0, l1], rest)) = self.rest.split_first_chunk::<ITEM_HEADER_LEN>() else {
            return Err(CodecError::InvalidLength { field: self.parent });
        };
        let (body, rest) = rest
            .split_at_checked(usize::from(u16::from_be_bytes([l0, l1])))
            .ok_or(CodecError::InvalidLength { field: item_name(item_type) })?;
        Ok((Item { item_type, body }, rest))
    }
}

impl<'a> Iterator for Items<'a> {
    type Item = Result<Item<'a>, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        Some(match self.split_item() {
            Ok((item, rest)) => {
                self.rest = rest;
                Ok(item)
            }
            Err(error) => {
                self.rest = &[];
                Err(error)
            }
        })
    }
}

/// Names for error messages, as PS3.8 and PS3.7 annex D call the items.
fn item_name(item_type: u8) -> &'static str {
    match item_type {
        APPLICATION_CONTEXT => "application context item (10H)",
        PRESENTATION_CONTEXT_RQ => "presentation context item (20H)",
        PRESENTATION_CONTEXT_AC => "presentation context item (21H)",
        ABSTRACT_SYNTAX => "abstract syntax sub-item (30H)",
        TRANSFER_SYNTAX => "transfer syntax sub-item (40H)",
        USER_INFORMATION => "user information item (50H)",
        MAXIMUM_LENGTH => "maximum length sub-item (51H)",
        IMPLEMENTATION_CLASS_UID => "implementation class UID sub-item (52H)",
        ASYNC_OPERATIONS_WINDOW => "asynchronous operations window sub-item (53H)",
        ROLE_SELECTION => "SCP/SCU role selection sub-item (54H)",
        IMPLEMENTATION_VERSION_NAME => "implementation version name sub-item (55H)",
        USER_IDENTITY_RQ => "user identity sub-item (58H)",
        USER_IDENTITY_AC => "user identity sub-item (59H)",
        _ => "unknown item",
    }
}

fn is_padding(byte: &u8) -> bool {
    *byte == b' ' || *byte == 0
}

/// AE titles: leading and trailing spaces are not significant (PS3.8 §9.3.2); some peers pad
/// with NULs instead.
fn decode_ae_title(bytes: &[u8]) -> String {
    let end = bytes.iter().rposition(|b| !is_padding(b)).map_or(0, |i| i + 1);
    let start = bytes.iter().position(|b| !is_padding(b)).unwrap_or(end);
    text(&bytes[start..end])
}

/// UIDs and names in items: peers pad them to an even length with a NUL (PS3.5 §9.1) or a
/// space, which is not part of the value.
fn decode_uid(bytes: &[u8]) -> String {
    let end = bytes.iter().rposition(|b| !is_padding(b)).map_or(0, |i| i + 1);
    text(&bytes[..end])
}

/// These fields use the default character repertoire; anything else is replaced rather than
/// rejected, since the association layer compares them against what it knows anyway.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether `buf` (the front of a receive buffer) holds whole PDUs only, the last one a
/// P-DATA-TF whose last PDV is the last fragment of a data set: a sender that has sent that
/// has sent its whole request (PS3.7 §9.3: the data set comes last) and now waits for our
/// answer, which carries the acknowledgement of what it sent. Malformed or incomplete
/// input is `false`; `decode` judges it.
///
/// Cost: a walk over the PDU and PDV item headers in `buf`, no copy; asked once per
/// response written (see `Connection::read_pdu`).
pub fn ends_a_data_set(buf: &[u8]) -> bool {
    let mut rest = buf;
    let mut last_pdu: Option<(u8, &[u8])> = None;
    while !rest.is_empty() {
        let Some((&[code, _, l0, l1, l2, l3], after)) = rest.split_first_chunk::<PDU_HEADER_LEN>() else {
            return false;
        };
        let Some((body, after)) = after.split_at_checked(u32::from_be_bytes([l0, l1, l2, l3]) as usize) else {
            return false;
        };
        last_pdu = Some((code, body));
        rest = after;
    }
    let mut items = match last_pdu {
        Some((code, body)) if code == PduType::PDataTf as u8 => body,
        _ => return false,
    };
    let mut last_control = None;
    while !items.is_empty() {
        let Some((_, control, data_len)) = pdv_header(items) else {
            return false;
        };
        last_control = Some(control);
        items = &items[PDV_HEADER_LEN + data_len..];
    }
    last_control.is_some_and(|control| control & MCH_LAST != 0 && control & MCH_COMMAND == 0)
}

/// Bytes before the data of a P-DATA-TF holding one PDV: PDU header and PDV item header.
pub const PDATA_HEADER_LEN: usize = PDU_HEADER_LEN + PDV_HEADER_LEN;

/// The header of a P-DATA-TF PDU holding one PDV of `data_len` bytes (PS3.8 §9.3.5), so that
/// the data can be written from where it is, without being copied into the PDU. `data_len`
/// must leave room for the headers within the 32-bit lengths (callers fragment to the
/// peer's maximum PDU length, itself a u32).
pub fn pdata_header(context_id: u8, is_command: bool, is_last: bool, data_len: u32) -> [u8; PDATA_HEADER_LEN] {
    let item_len = data_len + 2;
    let pdu_len = item_len + 4;
    let mut header = [0u8; PDATA_HEADER_LEN];
    header[0] = PduType::PDataTf as u8;
    header[2..6].copy_from_slice(&pdu_len.to_be_bytes());
    header[6..10].copy_from_slice(&item_len.to_be_bytes());
    header[10] = context_id;
    header[11] = message_control_header(is_command, is_last);
    header
}

/// PS3.8 annex E.2: bit 0 command (else data set), bit 1 last fragment.
fn message_control_header(is_command: bool, is_last: bool) -> u8 {
    let mut mch = 0;
    if is_command {
        mch |= MCH_COMMAND;
    }
    if is_last {
        mch |= MCH_LAST;
    }
    mch
}

/// Appends the encoding of `pdu` to `out`.
///
/// Values are written as given (an A-ASSOCIATE-RQ with no presentation context, a P-DATA-TF
/// with no PDV), except that AE titles are padded or truncated to 16 bytes. An item whose
/// content does not fit its 16-bit length field (a UID or user identity field over 64 KiB,
/// some thousand transfer syntaxes in one context) is left out, so the output is always well
/// formed; no value built from a received PDU comes near that.
pub fn encode(pdu: &Pdu, out: &mut BytesMut) {
    match pdu {
        Pdu::AssociateRq(rq) => write_pdu(out, PduType::AssociateRq, |out| {
            put_associate_fixed(out, rq.protocol_version, &rq.called_ae_title, &rq.calling_ae_title);
            write_str_item(out, APPLICATION_CONTEXT, &rq.application_context);
            for pc in &rq.presentation_contexts {
                write_item(out, PRESENTATION_CONTEXT_RQ, |out| {
                    out.put_slice(&[pc.id, 0, 0, 0]);
                    write_str_item(out, ABSTRACT_SYNTAX, &pc.abstract_syntax);
                    for ts in &pc.transfer_syntaxes {
                        write_str_item(out, TRANSFER_SYNTAX, ts);
                    }
                });
            }
            write_user_information(out, &rq.user_information);
        }),
        Pdu::AssociateAc(ac) => write_pdu(out, PduType::AssociateAc, |out| {
            put_associate_fixed(out, ac.protocol_version, &ac.called_ae_title, &ac.calling_ae_title);
            write_str_item(out, APPLICATION_CONTEXT, &ac.application_context);
            for pc in &ac.presentation_contexts {
                write_item(out, PRESENTATION_CONTEXT_AC, |out| {
                    out.put_slice(&[pc.id, 0, pc.result as u8, 0]);
                    write_str_item(out, TRANSFER_SYNTAX, &pc.transfer_syntax);
                });
            }
            write_user_information(out, &ac.user_information);
        }),
        Pdu::AssociateRj(rj) => write_pdu(out, PduType::AssociateRj, |out| {
            out.put_slice(&[0, rj.result, rj.source, rj.reason]);
        }),
        Pdu::PData(p_data) => {
            out.reserve(PDU_HEADER_LEN + p_data.items.len());
            write_pdu(out, PduType::PDataTf, |out| out.put_slice(&p_data.items));
        }
        Pdu::ReleaseRq => write_pdu(out, PduType::ReleaseRq, |out| out.put_u32(0)),
        Pdu::ReleaseRp => write_pdu(out, PduType::ReleaseRp, |out| out.put_u32(0)),
        Pdu::Abort(abort) => write_pdu(out, PduType::Abort, |out| {
            out.put_slice(&[0, 0, abort.source, abort.reason]);
        }),
    }
}

/// PDU header, then `body`, then the length filled in (PS3.8 §9.3.1). A body over 4 GiB is
/// left out with its header.
fn write_pdu(out: &mut BytesMut, pdu_type: PduType, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_slice(&[pdu_type as u8, 0, 0, 0, 0, 0]);
    body(out);
    match u32::try_from(out.len() - start - PDU_HEADER_LEN) {
        Ok(len) => out[start + 2..start + PDU_HEADER_LEN].copy_from_slice(&len.to_be_bytes()),
        Err(_) => out.truncate(start),
    }
}

/// Item header, then `body`, then the length filled in (PS3.8 §9.3.2). An item whose body
/// does not fit the 16-bit length is left out, which keeps its parent well formed.
fn write_item(out: &mut BytesMut, item_type: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_slice(&[item_type, 0, 0, 0]);
    body(out);
    match u16::try_from(out.len() - start - ITEM_HEADER_LEN) {
        Ok(len) => out[start + 2..start + ITEM_HEADER_LEN].copy_from_slice(&len.to_be_bytes()),
        Err(_) => out.truncate(start),
    }
}

fn write_str_item(out: &mut BytesMut, item_type: u8, value: &str) {
    write_item(out, item_type, |out| out.put_slice(value.as_bytes()));
}

/// Protocol version, reserved, called and calling AE titles, 32 reserved bytes
/// (PS3.8 §9.3.2, §9.3.3).
fn put_associate_fixed(out: &mut BytesMut, protocol_version: u16, called: &str, calling: &str) {
    out.put_u16(protocol_version);
    out.put_u16(0);
    put_ae_title(out, called);
    put_ae_title(out, calling);
    out.put_bytes(0, ASSOCIATE_RESERVED_LEN);
}

/// 16 bytes, space padded (PS3.8 §9.3.2); longer titles are cut.
fn put_ae_title(out: &mut BytesMut, title: &str) {
    let bytes = title.as_bytes();
    let bytes = &bytes[..bytes.len().min(AE_TITLE_LEN)];
    out.put_slice(bytes);
    out.put_bytes(b' ', AE_TITLE_LEN - bytes.len());
}

/// Sub-items in the order PS3.7 annex D.3.3 lists them. The item's length is 16 bits: SCP/SCU
/// role selection sub-items that would push it past that are left out (an A-ASSOCIATE-AC
/// echoing a thousand of them would otherwise lose the whole item, maximum length included,
/// which PS3.8 makes mandatory). Leaving a role reply out is allowed: the requestor then
/// keeps its default role for that SOP class (PS3.7 D.3.3.4).
fn write_user_information(out: &mut BytesMut, info: &UserInformation) {
    write_item(out, USER_INFORMATION, |out| {
        let start = out.len();
        if let Some(max) = info.max_pdu_length {
            write_item(out, MAXIMUM_LENGTH, |out| out.put_u32(max));
        }
        if let Some(uid) = &info.implementation_class_uid {
            write_str_item(out, IMPLEMENTATION_CLASS_UID, uid);
        }
        if let Some((invoked, performed)) = info.async_ops_window {
            write_item(out, ASYNC_OPERATIONS_WINDOW, |out| {
                out.put_u16(invoked);
                out.put_u16(performed);
            });
        }
        // Room the sub-items written after the role selections will take.
        let after_roles = info.implementation_version_name.as_ref().map_or(0, |name| item_len(name.len()))
            + info.user_identity.as_ref().map_or(0, |identity| {
                item_len(2 + 2 + identity.primary_field.len() + 2 + identity.secondary_field.len())
            })
            + info.user_identity_response.as_ref().map_or(0, |response| item_len(2 + response.len()));
        for role in &info.role_selections {
            let role_len = item_len(2 + role.sop_class_uid.len() + 2);
            if out.len() - start + role_len + after_roles > usize::from(u16::MAX) {
                continue;
            }
            write_item(out, ROLE_SELECTION, |out| {
                put_u16_prefixed(out, role.sop_class_uid.as_bytes());
                out.put_u8(u8::from(role.scu_role));
                out.put_u8(u8::from(role.scp_role));
            });
        }
        if let Some(name) = &info.implementation_version_name {
            write_str_item(out, IMPLEMENTATION_VERSION_NAME, name);
        }
        if let Some(identity) = &info.user_identity {
            write_item(out, USER_IDENTITY_RQ, |out| {
                out.put_u8(identity.identity_type);
                out.put_u8(u8::from(identity.positive_response_requested));
                put_u16_prefixed(out, &identity.primary_field);
                put_u16_prefixed(out, &identity.secondary_field);
            });
        }
        if let Some(response) = &info.user_identity_response {
            write_item(out, USER_IDENTITY_AC, |out| put_u16_prefixed(out, response));
        }
    });
}

/// Bytes an item with a body of `body_len` bytes takes once written: none when `write_item`
/// leaves it out for not fitting its 16-bit length.
fn item_len(body_len: usize) -> usize {
    if body_len <= usize::from(u16::MAX) {
        ITEM_HEADER_LEN + body_len
    } else {
        0
    }
}

/// A field preceded by its 2-byte length. Only called inside an item, whose own 16-bit
/// length cannot hold a field longer than 64 KiB: `write_item` then leaves the whole item
/// out, so the saturated length never reaches the wire.
fn put_u16_prefixed(out: &mut BytesMut, field: &[u8]) {
    out.put_u16(u16::try_from(field.len()).unwrap_or(u16::MAX));
    out.put_slice(field);
}

/// Length, presentation context ID, message control header, data (PS3.8 §9.3.5.1, annex E.2).
/// A PDV over 4 GiB cannot be expressed and is left out (its PDU could not be either).
fn put_pdv(out: &mut BytesMut, pdv: &Pdv) {
    let Some(len) = pdv.data.len().checked_add(2).and_then(|len| u32::try_from(len).ok()) else {
        return;
    };
    out.put_u32(len);
    out.put_slice(&[pdv.context_id, message_control_header(pdv.is_command, pdv.is_last)]);
    out.put_slice(&pdv.data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    const LIMIT: u32 = 16384;

    const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
    const MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4";
    const VERIFICATION: &str = "1.2.840.10008.1.1";
    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
    const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
    const IMPLICIT_LE: &str = "1.2.840.10008.1.2";

    // Hand-built wire bytes, independent of `encode`.

    fn item(item_type: u8, body: &[u8]) -> Vec<u8> {
        let len = u16::try_from(body.len()).unwrap().to_be_bytes();
        [&[item_type, 0, len[0], len[1]], body].concat()
    }

    fn pdu(pdu_type: u8, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        [&[pdu_type, 0], &len[..], body].concat()
    }

    fn u16_prefixed(field: &[u8]) -> Vec<u8> {
        [&u16::try_from(field.len()).unwrap().to_be_bytes()[..], field].concat()
    }

    /// Protocol version 1, AE titles as given (already padded), reserved zeros.
    fn associate_fixed(called: &[u8; 16], calling: &[u8; 16]) -> Vec<u8> {
        [&[0, 1, 0, 0][..], called, calling, &[0; 32]].concat()
    }

    fn pdv(context_id: u8, mch: u8, data: &[u8]) -> Vec<u8> {
        let len = u32::try_from(data.len() + 2).unwrap().to_be_bytes();
        [&len[..], &[context_id, mch], data].concat()
    }

    /// What dcmtk's storescu sends for CT and MR with explicit/implicit transfer syntaxes,
    /// plus verification, role selection and user identity; one UID padded with a NUL, and an
    /// unknown item and sub-items that must be skipped.
    fn storescu_rq_bytes() -> Vec<u8> {
        let user_information = [
            item(0x51, &16384u32.to_be_bytes()),
            item(0x52, b"1.2.276.0.7230010.3.0.3.6.7"),
            item(0x54, &[u16_prefixed(CT_IMAGE_STORAGE.as_bytes()), vec![1, 0]].concat()),
            item(0x55, b"OFFIS_DCMTK_367 "),
            item(0x56, &[u16_prefixed(b"1.2.3"), vec![1]].concat()),
            item(0x58, &[vec![2, 1], u16_prefixed(b"alice"), u16_prefixed(b"secret")].concat()),
            item(0x5F, b"from the future"),
        ]
        .concat();
        let body = [
            associate_fixed(b"ANY-SCP         ", b"  STORESCU\0\0\0\0\0\0"),
            item(0x10, DICOM_APPLICATION_CONTEXT.as_bytes()),
            item(
                0x20,
                &[
                    vec![1, 0, 0, 0],
                    item(0x30, CT_IMAGE_STORAGE.as_bytes()),
                    item(0x40, EXPLICIT_LE.as_bytes()),
                    item(0x40, EXPLICIT_BE.as_bytes()),
                    item(0x40, IMPLICIT_LE.as_bytes()),
                ]
                .concat(),
            ),
            item(
                0x20,
                &[vec![3, 0, 0, 0], item(0x30, MR_IMAGE_STORAGE.as_bytes()), item(0x40, b"1.2.840.10008.1.2\0")]
                    .concat(),
            ),
            item(
                0x20,
                &[vec![5, 0, 0, 0], item(0x30, VERIFICATION.as_bytes()), item(0x40, IMPLICIT_LE.as_bytes())].concat(),
            ),
            item(0x7F, b"unknown item"),
            item(0x50, &user_information),
        ]
        .concat();
        pdu(0x01, &body)
    }

    fn storescu_rq() -> AssociateRq {
        let uid = str::to_string;
        AssociateRq {
            protocol_version: 1,
            called_ae_title: "ANY-SCP".into(),
            calling_ae_title: "STORESCU".into(),
            application_context: DICOM_APPLICATION_CONTEXT.into(),
            presentation_contexts: vec![
                PresentationContextRq {
                    id: 1,
                    abstract_syntax: uid(CT_IMAGE_STORAGE),
                    transfer_syntaxes: vec![uid(EXPLICIT_LE), uid(EXPLICIT_BE), uid(IMPLICIT_LE)],
                },
                PresentationContextRq {
                    id: 3,
                    abstract_syntax: uid(MR_IMAGE_STORAGE),
                    transfer_syntaxes: vec![uid(IMPLICIT_LE)],
                },
                PresentationContextRq {
                    id: 5,
                    abstract_syntax: uid(VERIFICATION),
                    transfer_syntaxes: vec![uid(IMPLICIT_LE)],
                },
            ],
            user_information: UserInformation {
                max_pdu_length: Some(16384),
                implementation_class_uid: Some(uid("1.2.276.0.7230010.3.0.3.6.7")),
                implementation_version_name: Some(uid("OFFIS_DCMTK_367")),
                async_ops_window: None,
                role_selections: vec![RoleSelection {
                    sop_class_uid: uid(CT_IMAGE_STORAGE),
                    scu_role: true,
                    scp_role: false,
                }],
                user_identity: Some(UserIdentity {
                    identity_type: 2,
                    positive_response_requested: true,
                    primary_field: b"alice".to_vec(),
                    secondary_field: b"secret".to_vec(),
                }),
                user_identity_response: None,
            },
        }
    }

    /// A minimal A-ASSOCIATE-RQ around the given variable items.
    fn rq_with_items(items: &[Vec<u8>]) -> Vec<u8> {
        pdu(0x01, &[associate_fixed(&[b' '; 16], &[b' '; 16]), items.concat()].concat())
    }

    fn decode_bytes(bytes: &[u8]) -> Result<Option<Pdu>, CodecError> {
        decode(&mut BytesMut::from(bytes), LIMIT)
    }

    fn decode_err(bytes: &[u8]) -> CodecError {
        decode_bytes(bytes).expect_err("decoding should fail")
    }

    /// `decode` plus the invariants every call must keep: Ok(None) consumes nothing, Ok(Some)
    /// consumes exactly the PDU its header announces.
    fn decode_checked(buf: &mut BytesMut, limit: u32) -> Result<Option<Pdu>, CodecError> {
        let before = buf.clone();
        let result = decode(buf, limit);
        match &result {
            Ok(None) => assert_eq!(*buf, before),
            Ok(Some(_)) => {
                let announced = u32::from_be_bytes(before[2..6].try_into().unwrap());
                let consumed = before.len() - buf.len();
                assert_eq!(consumed, PDU_HEADER_LEN + announced as usize);
                assert_eq!(buf[..], before[consumed..]);
            }
            Err(_) => {}
        }
        result
    }

    /// Every PDU `buf` holds now; stops at the first error.
    fn decode_available(buf: &mut BytesMut, limit: u32) -> Result<Vec<Pdu>, CodecError> {
        let mut pdus = Vec::new();
        while let Some(pdu) = decode_checked(buf, limit)? {
            pdus.push(pdu);
        }
        Ok(pdus)
    }

    fn encoded(pdus: &[Pdu]) -> BytesMut {
        let mut out = BytesMut::new();
        pdus.iter().for_each(|pdu| encode(pdu, &mut out));
        out
    }

    #[test]
    fn decodes_storescu_associate_rq() {
        let mut buf = BytesMut::from(&storescu_rq_bytes()[..]);
        assert_eq!(decode(&mut buf, LIMIT), Ok(Some(Pdu::AssociateRq(storescu_rq()))));
        assert!(buf.is_empty());
    }

    #[test]
    fn decodes_associate_ac() {
        let user_information = [
            item(0x51, &0u32.to_be_bytes()),
            item(0x52, b"1.2.3.4\0"),
            item(0x55, b"OXIDIP"),
            item(0x59, &u16_prefixed(b"token")),
        ]
        .concat();
        let body = [
            associate_fixed(b"ANY-SCP         ", b"STORESCU        "),
            item(0x10, DICOM_APPLICATION_CONTEXT.as_bytes()),
            item(0x21, &[vec![1, 0, 0, 0], item(0x40, EXPLICIT_LE.as_bytes())].concat()),
            item(0x21, &[vec![3, 0, 3, 0], item(0x40, IMPLICIT_LE.as_bytes())].concat()),
            item(0x50, &user_information),
        ]
        .concat();
        let expected = AssociateAc {
            protocol_version: 1,
            called_ae_title: "ANY-SCP".into(),
            calling_ae_title: "STORESCU".into(),
            application_context: DICOM_APPLICATION_CONTEXT.into(),
            presentation_contexts: vec![
                PresentationContextAc {
                    id: 1,
                    result: PresentationContextResult::Acceptance,
                    transfer_syntax: EXPLICIT_LE.into(),
                },
                PresentationContextAc {
                    id: 3,
                    result: PresentationContextResult::AbstractSyntaxNotSupported,
                    transfer_syntax: IMPLICIT_LE.into(),
                },
            ],
            user_information: UserInformation {
                max_pdu_length: Some(0),
                implementation_class_uid: Some("1.2.3.4".into()),
                implementation_version_name: Some("OXIDIP".into()),
                user_identity_response: Some(b"token".to_vec()),
                ..UserInformation::default()
            },
        };
        assert_eq!(decode_bytes(&pdu(0x02, &body)), Ok(Some(Pdu::AssociateAc(expected))));
    }

    #[test]
    fn decodes_fixed_size_pdus() {
        let rj = AssociateRj { result: 1, source: 1, reason: 7 };
        assert_eq!(decode_bytes(&pdu(0x03, &[0, 1, 1, 7])), Ok(Some(Pdu::AssociateRj(rj))));
        assert_eq!(decode_bytes(&pdu(0x05, &[0; 4])), Ok(Some(Pdu::ReleaseRq)));
        // Reserved fields are not tested (PS3.8 §9.3.1).
        assert_eq!(decode_bytes(&pdu(0x06, &[9; 4])), Ok(Some(Pdu::ReleaseRp)));
        let abort = Abort { source: 2, reason: 6 };
        assert_eq!(decode_bytes(&pdu(0x07, &[0, 0, 2, 6])), Ok(Some(Pdu::Abort(abort))));
    }

    #[test]
    fn p_data_pdvs_are_slices_of_the_received_buffer() {
        let bytes = pdu(0x04, &[pdv(1, 0b11, b"command"), pdv(3, 0b00, b"dataset fragment")].concat());
        let mut buf = BytesMut::from(&bytes[..]);
        let base = buf.as_ptr() as usize;
        let Ok(Some(Pdu::PData(p_data))) = decode(&mut buf, LIMIT) else {
            panic!("expected a P-DATA-TF");
        };
        let pdvs: Vec<Pdv> = p_data.iter().collect();
        let expected = [(1, true, true, &b"command"[..], 12), (3, false, false, b"dataset fragment", 25)];
        assert_eq!(pdvs.len(), expected.len());
        for (pdv, (context_id, is_command, is_last, data, offset)) in pdvs.iter().zip(expected) {
            assert_eq!((pdv.context_id, pdv.is_command, pdv.is_last), (context_id, is_command, is_last));
            assert_eq!(&pdv.data[..], data);
            assert_eq!(pdv.data.as_ptr() as usize, base + offset, "PDV data was copied");
        }
    }

    #[test]
    fn unknown_pdu_type_is_rejected_from_the_header_alone() {
        for pdu_type in [0x00, 0x08, 0xFF] {
            let error = decode_err(&[pdu_type, 0, 0, 0, 0, 4]);
            assert_eq!(error, CodecError::UnrecognizedPdu { pdu_type });
            assert_eq!(error.abort_reason(), 1);
        }
    }

    #[test]
    fn over_limit_length_is_rejected_from_the_header_alone() {
        let error = decode_err(&[0x04, 0, 0x00, 0x4C, 0x4B, 0x40]);
        assert_eq!(error, CodecError::PduTooLong { pdu_type: 4, length: 5_000_000, limit: LIMIT });
        assert_eq!(error.abort_reason(), 6);
        assert_eq!(error.to_string(), "P-DATA-TF of 5000000 bytes exceeds the limit of 16384");

        let rq = decode_err(&[0x01, 0, 0x00, 0x20, 0x00, 0x00]);
        assert!(matches!(rq, CodecError::PduTooLong { limit: MAX_CONTROL_PDU_LEN, .. }));
        let release = decode_err(&[0x05, 0, 0, 0, 0, 5]);
        assert!(matches!(release, CodecError::PduTooLong { length: 5, limit: 4, .. }));
    }

    #[test]
    fn incomplete_pdu_consumes_nothing() {
        let bytes = storescu_rq_bytes();
        for len in [0, 3, PDU_HEADER_LEN, bytes.len() - 1] {
            let mut buf = BytesMut::from(&bytes[..len]);
            assert_eq!(decode(&mut buf, LIMIT), Ok(None));
            assert_eq!(buf.len(), len);
        }
    }

    #[test]
    fn pdv_lengths_must_add_up_to_the_pdu_length() {
        let too_long = [&50u32.to_be_bytes()[..], &[1, 0], &[0; 10]].concat();
        let one_too_long = [&13u32.to_be_bytes()[..], &[1, 0], &[0; 10]].concat();
        let trailing = [pdv(1, 0, b"data"), vec![0, 0, 0]].concat();
        let below_minimum = [pdv(1, 0, b"data"), vec![0, 0, 0, 1, 1]].concat();
        for body in [too_long, one_too_long, trailing, below_minimum] {
            let error = decode_err(&pdu(0x04, &body));
            assert_eq!(error, CodecError::InvalidLength { field: "PDV item" });
            assert_eq!(error.abort_reason(), 6);
        }
        let empty = decode_err(&pdu(0x04, &[]));
        assert_eq!(empty, CodecError::InvalidLength { field: "P-DATA-TF" });
        assert_eq!(empty.abort_reason(), 6);
    }

    #[test]
    fn fixed_size_pdus_must_be_four_bytes() {
        assert_eq!(decode_err(&pdu(0x07, &[0, 0, 2])), CodecError::InvalidLength { field: "A-ABORT" });
    }

    #[test]
    fn item_lengths_must_fit_their_parent() {
        let context = [vec![1, 0, 0, 0], item(0x30, VERIFICATION.as_bytes())].concat();
        let mut overlong_item = item(0x20, &context);
        overlong_item[3] += 1;
        let mut overlong_sub_item = context.clone();
        overlong_sub_item[7] += 1;
        let role = [u16_prefixed(b"1.2"), vec![1]].concat();
        let identity = [vec![1, 0], u16_prefixed(b"bob")].concat();
        let cases = [
            (vec![overlong_item], "presentation context item (20H)"),
            (vec![item(0x20, &overlong_sub_item)], "abstract syntax sub-item (30H)"),
            (vec![item(0x20, &[1, 0, 0])], "presentation context item (20H)"),
            (vec![item(0x50, &item(0x51, &[0x40, 0]))], "maximum length sub-item (51H)"),
            (vec![item(0x50, &item(0x53, &[0, 1, 0]))], "asynchronous operations window sub-item (53H)"),
            (vec![item(0x50, &item(0x54, &role))], "SCP/SCU role selection sub-item (54H)"),
            (vec![item(0x50, &item(0x58, &identity))], "user identity sub-item (58H)"),
            (vec![item(0x50, &item(0x59, &[0, 5, b'x']))], "user identity sub-item (59H)"),
            (vec![vec![0x50, 0, 0]], "A-ASSOCIATE-RQ"),
        ];
        for (items, field) in cases {
            let error = decode_err(&rq_with_items(&items));
            assert_eq!(error, CodecError::InvalidLength { field });
            assert_eq!(error.abort_reason(), 6);
        }
        let short_fixed_part = pdu(0x01, &[0; 67]);
        assert_eq!(decode_err(&short_fixed_part), CodecError::InvalidLength { field: "A-ASSOCIATE-RQ" });
    }

    #[test]
    fn misplaced_or_repeated_items_are_unexpected_parameters() {
        let ac_context = item(0x21, &[vec![1, 0, 0, 0], item(0x40, IMPLICIT_LE.as_bytes())].concat());
        let application_context = item(0x10, DICOM_APPLICATION_CONTEXT.as_bytes());
        let max_length = item(0x51, &[0; 4]);
        let cases = [
            (vec![ac_context], "A-ASSOCIATE-RQ", 0x21),
            (vec![application_context.clone(), application_context], "A-ASSOCIATE-RQ", 0x10),
            (vec![item(0x50, &[max_length.clone(), max_length].concat())], "user information item (50H)", 0x51),
        ];
        for (items, parent, item_type) in cases {
            let error = decode_err(&rq_with_items(&items));
            assert_eq!(error, CodecError::UnexpectedItem { parent, item_type });
            assert_eq!(error.abort_reason(), 5);
        }
    }

    #[test]
    fn unknown_presentation_context_result_is_invalid() {
        let body = [
            associate_fixed(&[b' '; 16], &[b' '; 16]),
            item(0x21, &[vec![1, 0, 7, 0], item(0x40, IMPLICIT_LE.as_bytes())].concat()),
        ]
        .concat();
        let error = decode_err(&pdu(0x02, &body));
        assert_eq!(error, CodecError::InvalidValue { field: "presentation context result", value: 7 });
        assert_eq!(error.abort_reason(), 6);
    }

    #[test]
    fn missing_items_are_left_to_the_association_layer() {
        let context = item(0x20, &[vec![1, 0, 0, 0], item(0x40, IMPLICIT_LE.as_bytes())].concat());
        let Ok(Some(Pdu::AssociateRq(rq))) = decode_bytes(&rq_with_items(&[context])) else {
            panic!("expected an A-ASSOCIATE-RQ");
        };
        assert_eq!(rq.application_context, "");
        assert_eq!(rq.presentation_contexts[0].abstract_syntax, "");
        assert_eq!(rq.user_information, UserInformation::default());
    }

    #[test]
    fn bytes_arriving_one_at_a_time_decode_the_same() {
        let stream = [
            storescu_rq_bytes(),
            pdu(0x04, &[pdv(1, 0b11, b"command"), pdv(1, 0b10, b"")].concat()),
            pdu(0x05, &[0; 4]),
            pdu(0x07, &[0, 0, 0, 0]),
        ]
        .concat();
        let all_at_once = decode_available(&mut BytesMut::from(&stream[..]), LIMIT).unwrap();
        assert_eq!(all_at_once.len(), 4);
        let mut buf = BytesMut::new();
        let mut one_at_a_time = Vec::new();
        for &byte in &stream {
            buf.put_u8(byte);
            one_at_a_time.extend(decode_available(&mut buf, LIMIT).unwrap());
        }
        assert_eq!(one_at_a_time, all_at_once);
        assert!(buf.is_empty());
    }

    #[test]
    fn encodes_fixed_fields_as_ps3_8_lays_them_out() {
        let rq = AssociateRq {
            protocol_version: 1,
            called_ae_title: "A".into(),
            calling_ae_title: "ABCDEFGHIJKLMNOPQRST".into(),
            ..AssociateRq::default()
        };
        let bytes = encoded(&[Pdu::AssociateRq(rq)]);
        assert_eq!(bytes[..6], [0x01, 0, 0, 0, 0, 0x4C]);
        assert_eq!(bytes[6..10], [0, 1, 0, 0]);
        assert_eq!(bytes[10..26], *b"A               ");
        assert_eq!(bytes[26..42], *b"ABCDEFGHIJKLMNOP");
        assert_eq!(bytes[42..74], [0; 32]);
        assert_eq!(bytes[74..], [0x10, 0, 0, 0, 0x50, 0, 0, 0]);

        let pdus = [Pdu::ReleaseRq, Pdu::Abort(Abort { source: 2, reason: 1 })];
        assert_eq!(encoded(&pdus)[..], [5, 0, 0, 0, 0, 4, 0, 0, 0, 0, 7, 0, 0, 0, 0, 4, 0, 0, 2, 1]);
    }

    #[test]
    fn item_too_long_for_its_length_field_is_left_out() {
        let mut rq = storescu_rq();
        rq.user_information.user_identity = Some(UserIdentity {
            identity_type: 5,
            positive_response_requested: false,
            primary_field: vec![b'j'; 70_000],
            secondary_field: Vec::new(),
        });
        let mut buf = encoded(&[Pdu::AssociateRq(rq.clone())]);
        rq.user_information.user_identity = None;
        assert_eq!(decode(&mut buf, LIMIT), Ok(Some(Pdu::AssociateRq(rq))));
    }

    #[test]
    fn role_selections_that_overflow_the_user_information_item_are_left_out() {
        // A thousand 60-byte SOP class UIDs: 66 bytes each as sub-items, more than the
        // 65,535 the item's length can hold with the maximum length and identity beside them.
        let roles: Vec<RoleSelection> = (0..1000)
            .map(|i| RoleSelection { sop_class_uid: format!("1.2.{i:058}"), scu_role: true, scp_role: false })
            .collect();
        let mut ac = AssociateAc {
            protocol_version: 1,
            called_ae_title: "OXIDIP".into(),
            calling_ae_title: "STORESCU".into(),
            application_context: DICOM_APPLICATION_CONTEXT.into(),
            presentation_contexts: vec![],
            user_information: UserInformation {
                max_pdu_length: Some(16384),
                implementation_class_uid: Some("1.2.3.4".into()),
                implementation_version_name: Some("OXIDIP".into()),
                role_selections: roles.clone(),
                ..UserInformation::default()
            },
        };
        let mut buf = encoded(&[Pdu::AssociateAc(ac.clone())]);
        let Ok(Some(Pdu::AssociateAc(decoded))) = decode_checked(&mut buf, MAX_CONTROL_PDU_LEN) else {
            panic!("expected an A-ASSOCIATE-AC");
        };
        let kept = decoded.user_information.role_selections.len();
        assert!((900..1000).contains(&kept), "{kept} role selections kept");
        assert_eq!(decoded.user_information.role_selections[..], roles[..kept]);
        ac.user_information.role_selections.truncate(kept);
        assert_eq!(decoded, ac, "every other sub-item is kept");
    }

    #[test]
    fn millions_of_empty_pdvs_decode_and_iterate_in_order() {
        let count = 2_000_000;
        let items: Vec<u8> = (0..count).flat_map(|i| [0, 0, 0, 2, 1 + 2 * (i % 2) as u8, 0]).collect();
        let limit = 64 << 20;
        let Ok(Some(Pdu::PData(p_data))) = decode(&mut BytesMut::from(&pdu(0x04, &items)[..]), limit) else {
            panic!("expected a P-DATA-TF");
        };
        let context_ids: Vec<u8> = p_data.iter().map(|pdv| pdv.context_id).collect();
        assert_eq!(context_ids.len(), count as usize);
        assert!(context_ids.chunks(2).all(|pair| pair == [1, 3]));
        let mut cut_short = items.clone();
        cut_short.truncate(items.len() - 1);
        let error = decode(&mut BytesMut::from(&pdu(0x04, &cut_short)[..]), limit).unwrap_err();
        assert_eq!(error, CodecError::InvalidLength { field: "PDV item" });
    }

    #[test]
    fn a_buffer_ends_a_data_set_only_on_a_whole_last_data_fragment() {
        let command = pdu(0x04, &pdv(1, 0b11, b"command"));
        let data_last = pdu(0x04, &[pdv(1, 0b00, b"more"), pdv(1, 0b10, b"end")].concat());
        let data_more = pdu(0x04, &pdv(1, 0b00, b"more"));
        assert!(ends_a_data_set(&[command.clone(), data_last.clone()].concat()));
        assert!(ends_a_data_set(&data_last));
        assert!(!ends_a_data_set(&command), "the data set is still to come");
        assert!(!ends_a_data_set(&[command, data_more].concat()));
        assert!(!ends_a_data_set(&data_last[..data_last.len() - 1]), "incomplete PDU");
        assert!(!ends_a_data_set(&data_last[..3]), "incomplete header");
        assert!(!ends_a_data_set(&pdu(0x05, &[0; 4])));
        assert!(!ends_a_data_set(&[]));
    }

    // Strategies whose values survive a round trip exactly: AE titles without spaces at the
    // ends, UIDs and names without trailing padding.

    fn ae_title() -> impl Strategy<Value = String> {
        "([!-~]([ -~]{0,14}[!-~])?)?"
    }

    fn uid() -> impl Strategy<Value = String> {
        "[0-9.]{0,64}"
    }

    fn version_name() -> impl Strategy<Value = String> {
        "([ -~]{0,15}[!-~])?"
    }

    fn field() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..32)
    }

    fn user_information() -> impl Strategy<Value = UserInformation> {
        let role = (uid(), any::<bool>(), any::<bool>())
            .prop_map(|(sop_class_uid, scu_role, scp_role)| RoleSelection { sop_class_uid, scu_role, scp_role });
        let identity =
            (any::<u8>(), any::<bool>(), field(), field()).prop_map(|(t, positive, primary, secondary)| UserIdentity {
                identity_type: t,
                positive_response_requested: positive,
                primary_field: primary,
                secondary_field: secondary,
            });
        (
            any::<Option<u32>>(),
            proptest::option::of(uid()),
            proptest::option::of(version_name()),
            any::<Option<(u16, u16)>>(),
            prop::collection::vec(role, 0..3),
            proptest::option::of(identity),
            proptest::option::of(field()),
        )
            .prop_map(|(max, class_uid, version, window, roles, identity, response)| UserInformation {
                max_pdu_length: max,
                implementation_class_uid: class_uid,
                implementation_version_name: version,
                async_ops_window: window,
                role_selections: roles,
                user_identity: identity,
                user_identity_response: response,
            })
    }

    fn associate_rq() -> impl Strategy<Value = AssociateRq> {
        let context = (any::<u8>(), uid(), prop::collection::vec(uid(), 0..4))
            .prop_map(|(id, abstract_syntax, ts)| PresentationContextRq { id, abstract_syntax, transfer_syntaxes: ts });
        (any::<u16>(), ae_title(), ae_title(), uid(), prop::collection::vec(context, 0..4), user_information())
            .prop_map(|(version, called, calling, app, contexts, info)| AssociateRq {
                protocol_version: version,
                called_ae_title: called,
                calling_ae_title: calling,
                application_context: app,
                presentation_contexts: contexts,
                user_information: info,
            })
    }

    fn associate_ac() -> impl Strategy<Value = AssociateAc> {
        use PresentationContextResult::*;
        let result = prop::sample::select(vec![
            Acceptance,
            UserRejection,
            NoReason,
            AbstractSyntaxNotSupported,
            TransferSyntaxesNotSupported,
        ]);
        let context = (any::<u8>(), result, uid()).prop_map(|(id, result, transfer_syntax)| PresentationContextAc {
            id,
            result,
            transfer_syntax,
        });
        (any::<u16>(), ae_title(), ae_title(), uid(), prop::collection::vec(context, 0..4), user_information())
            .prop_map(|(version, called, calling, app, contexts, info)| AssociateAc {
                protocol_version: version,
                called_ae_title: called,
                calling_ae_title: calling,
                application_context: app,
                presentation_contexts: contexts,
                user_information: info,
            })
    }

    fn p_data() -> impl Strategy<Value = PData> {
        let pdv = (any::<u8>(), any::<bool>(), any::<bool>(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(
            |(context_id, is_command, is_last, data)| Pdv { context_id, is_command, is_last, data: Bytes::from(data) },
        );
        prop::collection::vec(pdv, 1..4).prop_map(|pdvs| PData::new(&pdvs))
    }

    fn any_pdu() -> impl Strategy<Value = Pdu> {
        prop_oneof![
            associate_rq().prop_map(Pdu::AssociateRq),
            associate_ac().prop_map(Pdu::AssociateAc),
            any::<(u8, u8, u8)>().prop_map(|(result, source, reason)| Pdu::AssociateRj(AssociateRj {
                result,
                source,
                reason
            })),
            p_data().prop_map(Pdu::PData),
            Just(Pdu::ReleaseRq),
            Just(Pdu::ReleaseRp),
            any::<(u8, u8)>().prop_map(|(source, reason)| Pdu::Abort(Abort { source, reason })),
        ]
    }

    /// Random bytes; random bodies behind a plausible header so the body parsers run; and
    /// P-DATA-TF bodies whose PDV lengths are off by a little, where off-by-ones hide.
    fn noise() -> impl Strategy<Value = Vec<u8>> {
        let framed = (0u8..9, prop::collection::vec(any::<u8>(), 0..300)).prop_map(|(t, body)| pdu(t, &body));
        let pdv = (-3i64..=3, prop::collection::vec(any::<u8>(), 0..16)).prop_map(|(delta, data)| {
            let len = u32::try_from((data.len() as i64 + 2 + delta).max(0)).unwrap();
            [&len.to_be_bytes()[..], &[1, 0], &data].concat()
        });
        let p_data = prop::collection::vec(pdv, 0..4).prop_map(|pdvs| pdu(0x04, &pdvs.concat()));
        prop_oneof![prop::collection::vec(any::<u8>(), 0..512), framed, p_data]
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Flip(Index, u8),
        Insert(Index, u8),
        Delete(Index),
        /// A small change to one byte: on the low byte of a length, an off-by-a-few length.
        Nudge(Index, i8),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<Index>(), 1..=u8::MAX).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
            (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
            any::<Index>().prop_map(Mutation::Delete),
            (any::<Index>(), -3i8..=3).prop_map(|(at, delta)| Mutation::Nudge(at, delta)),
        ]
    }

    fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
        match mutation {
            Mutation::Insert(at, byte) => bytes.insert(at.index(bytes.len() + 1), *byte),
            _ if bytes.is_empty() => {}
            Mutation::Flip(at, mask) => {
                let i = at.index(bytes.len());
                bytes[i] ^= mask;
            }
            Mutation::Delete(at) => {
                bytes.remove(at.index(bytes.len()));
            }
            Mutation::Nudge(at, delta) => {
                let i = at.index(bytes.len());
                bytes[i] = bytes[i].wrapping_add_signed(*delta);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trip(pdu in any_pdu()) {
            let mut buf = encoded(std::slice::from_ref(&pdu));
            prop_assert_eq!(decode_checked(&mut buf, MAX_CONTROL_PDU_LEN), Ok(Some(pdu)));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn random_bytes_never_panic(bytes in noise()) {
            let _ = decode_available(&mut BytesMut::from(&bytes[..]), LIMIT);
        }

        #[test]
        fn mutated_encodings_never_panic(
            pdu in any_pdu(),
            mutations in prop::collection::vec(mutation(), 1..8),
        ) {
            let mut bytes = encoded(&[pdu]).to_vec();
            mutations.iter().for_each(|m| mutate(&mut bytes, m));
            let _ = decode_available(&mut BytesMut::from(&bytes[..]), MAX_CONTROL_PDU_LEN);
        }

        #[test]
        fn stream_split_anywhere_decodes_the_same(
            pdus in prop::collection::vec(any_pdu(), 1..6),
            splits in prop::collection::vec(any::<Index>(), 0..8),
        ) {
            let stream = encoded(&pdus);
            let mut cuts: Vec<usize> = splits.iter().map(|at| at.index(stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            let mut start = 0;
            for cut in cuts {
                buf.extend_from_slice(&stream[start..cut]);
                start = cut;
                decoded.extend(decode_available(&mut buf, MAX_CONTROL_PDU_LEN).unwrap());
            }
            prop_assert_eq!(decoded, pdus);
            prop_assert!(buf.is_empty());
        }
    }

    #[test]
    fn pdata_header_matches_the_encoded_pdu() {
        for (is_command, is_last, data) in
            [(true, true, &b"cmd"[..]), (false, false, &[7u8; 1000][..]), (false, true, &[][..])]
        {
            let pdv = Pdv { context_id: 5, is_command, is_last, data: Bytes::copy_from_slice(data) };
            let mut expected = BytesMut::new();
            encode(&Pdu::PData(PData::new(&[pdv])), &mut expected);
            let mut written = pdata_header(5, is_command, is_last, data.len() as u32).to_vec();
            written.extend_from_slice(data);
            assert_eq!(written, &expected[..]);
        }
    }
}
