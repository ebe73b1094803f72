//! PS3.8 §9.3 protocol data units: their types and (in `codec`) how they are read from and
//! written to bytes. Nothing here knows about sockets.

use bytes::Bytes;

/// Application context name of DICOM (PS3.7 annex A.2.1).
pub const DICOM_APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";

/// One PDU as received or to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    AssociateRq(AssociateRq),
    AssociateAc(AssociateAc),
    AssociateRj(AssociateRj),
    PData(PData),
    ReleaseRq,
    ReleaseRp,
    Abort(Abort),
}

impl Pdu {
    /// The PDU's name in PS3.8 §9.3, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Pdu::AssociateRq(_) => "A-ASSOCIATE-RQ",
            Pdu::AssociateAc(_) => "A-ASSOCIATE-AC",
            Pdu::AssociateRj(_) => "A-ASSOCIATE-RJ",
            Pdu::PData(_) => "P-DATA-TF",
            Pdu::ReleaseRq => "A-RELEASE-RQ",
            Pdu::ReleaseRp => "A-RELEASE-RP",
            Pdu::Abort(_) => "A-ABORT",
        }
    }
}

/// A-ASSOCIATE-RQ (PS3.8 §9.3.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AssociateRq {
    pub protocol_version: u16,
    /// AE titles with their space padding removed (PS3.8 §9.3.2: leading and trailing spaces
    /// are not significant).
    pub called_ae_title: String,
    pub calling_ae_title: String,
    pub application_context: String,
    pub presentation_contexts: Vec<PresentationContextRq>,
    pub user_information: UserInformation,
}

/// Presentation context item of a request (PS3.8 §9.3.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PresentationContextRq {
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntaxes: Vec<String>,
}

/// A-ASSOCIATE-AC (PS3.8 §9.3.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AssociateAc {
    pub protocol_version: u16,
    /// Echoed from the request, as PS3.8 §9.3.3 asks (not tested by the requestor).
    pub called_ae_title: String,
    pub calling_ae_title: String,
    pub application_context: String,
    pub presentation_contexts: Vec<PresentationContextAc>,
    pub user_information: UserInformation,
}

/// Presentation context item of an accept (PS3.8 §9.3.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentationContextAc {
    pub id: u8,
    pub result: PresentationContextResult,
    /// The accepted transfer syntax; PS3.8 says it is not significant when the result is not
    /// acceptance, but the sub-item is still sent.
    pub transfer_syntax: String,
}

/// Result/reason of a presentation context (PS3.8 table 9-18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PresentationContextResult {
    Acceptance = 0,
    UserRejection = 1,
    NoReason = 2,
    AbstractSyntaxNotSupported = 3,
    TransferSyntaxesNotSupported = 4,
}

impl PresentationContextResult {
    /// The result in the words of PS3.8 table 9-18, for logs.
    pub fn description(self) -> &'static str {
        match self {
            PresentationContextResult::Acceptance => "acceptance",
            PresentationContextResult::UserRejection => "user rejection",
            PresentationContextResult::NoReason => "no reason (provider rejection)",
            PresentationContextResult::AbstractSyntaxNotSupported => "abstract syntax not supported",
            PresentationContextResult::TransferSyntaxesNotSupported => "transfer syntaxes not supported",
        }
    }
}

/// User information item (PS3.8 §9.3.2.3, PS3.7 annex D.3.3). Sub-items we do not know are
/// skipped on receipt (PS3.7 D.3.3: unknown user information sub-items are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInformation {
    /// Maximum length sub-item (51H): the largest P-DATA-TF PDU length the sender of this
    /// item accepts; 0 = unlimited.
    pub max_pdu_length: Option<u32>,
    pub implementation_class_uid: Option<String>,
    pub implementation_version_name: Option<String>,
    /// Asynchronous operations window (53H): (invoked, performed).
    pub async_ops_window: Option<(u16, u16)>,
    pub role_selections: Vec<RoleSelection>,
    pub user_identity: Option<UserIdentity>,
    /// User identity server response (59H, PS3.7 D.3.3.7.2), only in an A-ASSOCIATE-AC.
    pub user_identity_response: Option<Vec<u8>>,
}

/// SCP/SCU role selection sub-item (54H, PS3.7 D.3.3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSelection {
    pub sop_class_uid: String,
    pub scu_role: bool,
    pub scp_role: bool,
}

/// User identity negotiation sub-item (58H, PS3.7 D.3.3.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdentity {
    /// 1 username, 2 username and passcode, 3 Kerberos, 4 SAML, 5 JWT.
    pub identity_type: u8,
    pub positive_response_requested: bool,
    pub primary_field: Vec<u8>,
    pub secondary_field: Vec<u8>,
}

/// A-ASSOCIATE-RJ (PS3.8 §9.3.4, table 9-21); its values are in [`reject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssociateRj {
    /// 1 rejected-permanent, 2 rejected-transient.
    pub result: u8,
    /// 1 service user, 2 service provider (ACSE), 3 service provider (presentation).
    pub source: u8,
    pub reason: u8,
}

/// The values of A-ASSOCIATE-RJ's fields (PS3.8 table 9-21). Reasons are numbered per source.
pub mod reject {
    pub const REJECTED_PERMANENT: u8 = 1;
    pub const REJECTED_TRANSIENT: u8 = 2;

    pub const SOURCE_SERVICE_USER: u8 = 1;
    pub const SOURCE_SERVICE_PROVIDER_ACSE: u8 = 2;
    pub const SOURCE_SERVICE_PROVIDER_PRESENTATION: u8 = 3;

    /// Source 1 (service user).
    pub const REASON_NO_REASON_GIVEN: u8 = 1;
    pub const REASON_APPLICATION_CONTEXT_NOT_SUPPORTED: u8 = 2;
    pub const REASON_CALLING_AE_NOT_RECOGNIZED: u8 = 3;
    pub const REASON_CALLED_AE_NOT_RECOGNIZED: u8 = 7;
    /// Source 2 (service provider, ACSE).
    pub const REASON_PROTOCOL_VERSION_NOT_SUPPORTED: u8 = 2;
    /// Source 3 (service provider, presentation).
    pub const REASON_TEMPORARY_CONGESTION: u8 = 1;
    pub const REASON_LOCAL_LIMIT_EXCEEDED: u8 = 2;
}

impl std::fmt::Display for AssociateRj {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "A-ASSOCIATE-RJ result {}, source {}, reason {}", self.result, self.source, self.reason)
    }
}

/// A-ABORT (PS3.8 §9.3.8, table 9-26); its values are in [`abort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort {
    /// 0 service user, 2 service provider.
    pub source: u8,
    /// Meaningful only for source 2 (see [`abort`]).
    pub reason: u8,
}

/// The values of A-ABORT's fields (PS3.8 table 9-26).
pub mod abort {
    /// A-ABORT service user (PS3.8 §7.3): the application gave up on the association.
    pub const SOURCE_SERVICE_USER: u8 = 0;
    /// A-P-ABORT (PS3.8 §7.4): the upper layer met a protocol error.
    pub const SOURCE_SERVICE_PROVIDER: u8 = 2;

    /// Reasons, meaningful for source 2 only (0 is sent with source 0).
    pub const REASON_NOT_SPECIFIED: u8 = 0;
    pub const REASON_UNRECOGNIZED_PDU: u8 = 1;
    pub const REASON_UNEXPECTED_PDU: u8 = 2;
    pub const REASON_UNRECOGNIZED_PDU_PARAMETER: u8 = 4;
    pub const REASON_UNEXPECTED_PDU_PARAMETER: u8 = 5;
    pub const REASON_INVALID_PDU_PARAMETER_VALUE: u8 = 6;
}

impl Abort {
    /// An A-ABORT of the service user (PS3.8 §7.3.1): we end the association ourselves.
    pub const BY_USER: Abort = Abort { source: abort::SOURCE_SERVICE_USER, reason: abort::REASON_NOT_SPECIFIED };

    /// An A-P-ABORT for a protocol error, with its reason (PS3.8 §7.4).
    pub fn by_provider(reason: u8) -> Abort {
        Abort { source: abort::SOURCE_SERVICE_PROVIDER, reason }
    }
}

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "A-ABORT source {}, reason {}", self.source, self.reason)
    }
}

/// The presentation data value items of a P-DATA-TF (PS3.8 §9.3.5): the PDU body, whose item
/// lengths the codec checked on receipt, handed out one `Pdv` at a time (`iter`, in
/// `codec`). Nothing is allocated per item: a PDU of ten million empty items costs its own
/// bytes and no more (a vector of them cost 40 bytes each, +445 MiB for one 60 MiB PDU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PData {
    /// PDV items back to back, each one well formed (`codec::decode` or `PData::new`).
    pub(in crate::ul) items: Bytes,
}

/// One presentation data value item of a P-DATA-TF (PS3.8 §9.3.5.1, annex E.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdv {
    pub context_id: u8,
    /// Message control header bit 0.
    pub is_command: bool,
    /// Message control header bit 1.
    pub is_last: bool,
    /// The fragment; a slice of the received PDU, never copied.
    pub data: Bytes,
}
