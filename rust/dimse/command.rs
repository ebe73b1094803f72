//! DIMSE command sets (PS3.7 §9.3, §E): group 0000 elements, always encoded in implicit VR
//! little endian (PS3.7 §6.3.1), whatever transfer syntax the presentation context uses.

use std::fmt;

use super::status::Status;
use crate::dicom::element::{self as data_element, Reader, Syntax, TagName, Writer};
use crate::dicom::vr::Vr;

/// Command Field (0000,0100) values we use (PS3.7 annex E).
pub mod field {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_GET_RQ: u16 = 0x0010;
    pub const C_GET_RSP: u16 = 0x8010;
    pub const C_FIND_RQ: u16 = 0x0020;
    pub const C_FIND_RSP: u16 = 0x8020;
    pub const C_MOVE_RQ: u16 = 0x0021;
    pub const C_MOVE_RSP: u16 = 0x8021;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_ECHO_RSP: u16 = 0x8030;
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
}

/// Element numbers of group 0000 (PS3.7 table E.1-1).
pub mod element {
    pub const COMMAND_GROUP_LENGTH: u16 = 0x0000;
    pub const AFFECTED_SOP_CLASS_UID: u16 = 0x0002;
    pub const COMMAND_FIELD: u16 = 0x0100;
    pub const MESSAGE_ID: u16 = 0x0110;
    pub const MESSAGE_ID_BEING_RESPONDED_TO: u16 = 0x0120;
    pub const MOVE_DESTINATION: u16 = 0x0600;
    pub const PRIORITY: u16 = 0x0700;
    pub const COMMAND_DATA_SET_TYPE: u16 = 0x0800;
    pub const STATUS: u16 = 0x0900;
    pub const ERROR_COMMENT: u16 = 0x0902;
    pub const AFFECTED_SOP_INSTANCE_UID: u16 = 0x1000;
    pub const NUMBER_OF_REMAINING_SUB_OPERATIONS: u16 = 0x1020;
    pub const NUMBER_OF_COMPLETED_SUB_OPERATIONS: u16 = 0x1021;
    pub const NUMBER_OF_FAILED_SUB_OPERATIONS: u16 = 0x1022;
    pub const NUMBER_OF_WARNING_SUB_OPERATIONS: u16 = 0x1023;
}

/// CommandDataSetType (0000,0800) value meaning "no data set follows" (PS3.7 §E.1); any other
/// value means one does.
pub const NO_DATA_SET: u16 = 0x0101;

/// Largest command set we accept: commands are a few hundred bytes; this only bounds what a
/// hostile peer can make us buffer.
pub const MAX_COMMAND_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError(pub String);

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CommandError {}

/// A command set: its elements of group 0000 in the order they were read or added (encoding
/// sorts them, PS3.5 §7.1 requires ascending tag order), each with its VR, which only decides
/// the padding: implicit VR does not encode it, and a decoded element's is UN (unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandSet {
    elements: Vec<(u16, Vr, Vec<u8>)>,
}

impl CommandSet {
    /// Parses an implicit VR little endian command set.
    pub fn decode(bytes: &[u8]) -> Result<Self, CommandError> {
        let mut elements = Vec::new();
        for read in Reader::new(bytes, Syntax::ImplicitLittle) {
            let e = read.map_err(|e| CommandError(format!("command set {e}")))?;
            if e.tag >> 16 != 0x0000 {
                return Err(CommandError(format!("element {} in a command set", TagName(e.tag))));
            }
            elements.push((e.tag as u16, Vr::UN, e.value.to_vec()));
        }
        Ok(CommandSet { elements })
    }

    /// Encodes in implicit VR little endian with a correct (0000,0000) group length.
    pub fn encode(&self) -> Vec<u8> {
        let mut sorted: Vec<&(u16, Vr, Vec<u8>)> =
            self.elements.iter().filter(|(e, _, _)| *e != element::COMMAND_GROUP_LENGTH).collect();
        sorted.sort_by_key(|(e, _, _)| *e);
        let len = 12 + sorted.iter().map(|(_, _, v)| 8 + v.len() + v.len() % 2).sum::<usize>();
        let mut w = Writer::after(Vec::with_capacity(len), Syntax::ImplicitLittle);
        let group = w.group_length(0x0000);
        for (e, vr, v) in sorted {
            // Values of a command set are at most MAX_COMMAND_LEN, or strings we made.
            w.element(u32::from(*e), *vr, v).expect("command values are far below 4 GiB");
        }
        w.end_group(group).expect("command sets are far below 4 GiB");
        w.into_bytes()
    }

    fn raw(&self, element: u16) -> Option<&[u8]> {
        self.elements.iter().find(|(e, _, _)| *e == element).map(|(_, _, v)| v.as_slice())
    }

    pub fn get_u16(&self, element: u16) -> Option<u16> {
        match self.raw(element)? {
            [a, b] => Some(u16::from_le_bytes([*a, *b])),
            _ => None,
        }
    }

    /// A text value (UI, AE, LO) without its padding (trailing NUL or spaces).
    pub fn get_text(&self, element: u16) -> Option<String> {
        let trimmed = data_element::trimmed_text(self.raw(element)?);
        (!trimmed.is_empty()).then_some(trimmed)
    }

    pub fn set_u16(&mut self, element: u16, value: u16) -> &mut Self {
        self.set_raw(element, Vr::US, value.to_le_bytes().to_vec())
    }

    /// Sets a UI value, padded to even length with NUL when encoded (PS3.5 §9.1).
    pub fn set_uid(&mut self, element: u16, uid: &str) -> &mut Self {
        self.set_raw(element, Vr::UI, uid.as_bytes().to_vec())
    }

    /// Sets an LO/AE/SH value, padded to even length with a space when encoded (PS3.5 §6.2).
    pub fn set_text(&mut self, element: u16, text: &str) -> &mut Self {
        self.set_raw(element, Vr::LO, text.as_bytes().to_vec())
    }

    fn set_raw(&mut self, element: u16, vr: Vr, value: Vec<u8>) -> &mut Self {
        match self.elements.iter_mut().find(|(e, _, _)| *e == element) {
            Some(slot) => (slot.1, slot.2) = (vr, value),
            None => self.elements.push((element, vr, value)),
        }
        self
    }

    pub fn command_field(&self) -> Option<u16> {
        self.get_u16(element::COMMAND_FIELD)
    }

    pub fn message_id(&self) -> Option<u16> {
        self.get_u16(element::MESSAGE_ID)
    }

    /// Whether a data set follows this command (PS3.7 §E.1, CommandDataSetType).
    pub fn has_data_set(&self) -> bool {
        self.get_u16(element::COMMAND_DATA_SET_TYPE).is_some_and(|t| t != NO_DATA_SET)
    }

    pub fn affected_sop_class_uid(&self) -> Option<String> {
        self.get_text(element::AFFECTED_SOP_CLASS_UID)
    }

    pub fn affected_sop_instance_uid(&self) -> Option<String> {
        self.get_text(element::AFFECTED_SOP_INSTANCE_UID)
    }

    pub fn status(&self) -> Option<u16> {
        self.get_u16(element::STATUS)
    }
}

/// A response (C-STORE-RSP, C-ECHO-RSP) to a request (PS3.7 §9.3.1.2, §9.3.5.2): echoes the
/// message ID and SOP class/instance, carries the status and, on failure, the ErrorComment.
pub fn response(
    command_field: u16,
    message_id: u16,
    sop_class_uid: &str,
    sop_instance_uid: Option<&str>,
    status: &Status,
) -> CommandSet {
    let mut rsp = CommandSet::default();
    rsp.set_uid(element::AFFECTED_SOP_CLASS_UID, sop_class_uid)
        .set_u16(element::COMMAND_FIELD, command_field)
        .set_u16(element::MESSAGE_ID_BEING_RESPONDED_TO, message_id)
        .set_u16(element::COMMAND_DATA_SET_TYPE, NO_DATA_SET)
        .set_u16(element::STATUS, status.code);
    if let Some(uid) = sop_instance_uid {
        rsp.set_uid(element::AFFECTED_SOP_INSTANCE_UID, uid);
    }
    if let Some(comment) = &status.comment {
        rsp.set_text(element::ERROR_COMMENT, comment);
    }
    rsp
}

/// A C-ECHO-RQ (PS3.7 §9.3.5.1), for our SCU side.
pub fn c_echo_rq(message_id: u16) -> CommandSet {
    let mut rq = CommandSet::default();
    rq.set_uid(element::AFFECTED_SOP_CLASS_UID, crate::dicom::sop_class::VERIFICATION)
        .set_u16(element::COMMAND_FIELD, field::C_ECHO_RQ)
        .set_u16(element::MESSAGE_ID, message_id)
        .set_u16(element::COMMAND_DATA_SET_TYPE, NO_DATA_SET);
    rq
}

/// A C-STORE-RQ (PS3.7 §9.3.1.1), for our SCU side.
pub fn c_store_rq(message_id: u16, sop_class_uid: &str, sop_instance_uid: &str) -> CommandSet {
    let mut rq = CommandSet::default();
    rq.set_uid(element::AFFECTED_SOP_CLASS_UID, sop_class_uid)
        .set_u16(element::COMMAND_FIELD, field::C_STORE_RQ)
        .set_u16(element::MESSAGE_ID, message_id)
        .set_u16(element::PRIORITY, 0)
        .set_u16(element::COMMAND_DATA_SET_TYPE, 0x0000)
        .set_uid(element::AFFECTED_SOP_INSTANCE_UID, sop_instance_uid);
    rq
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dimse::status;

    #[test]
    fn store_request_round_trips_with_group_length() {
        let rq = c_store_rq(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5");
        let bytes = rq.encode();
        let decoded = CommandSet::decode(&bytes).unwrap();
        assert_eq!(decoded.command_field(), Some(field::C_STORE_RQ));
        assert_eq!(decoded.message_id(), Some(7));
        assert!(decoded.has_data_set());
        assert_eq!(decoded.affected_sop_instance_uid().as_deref(), Some("1.2.3.4.5"));
        // Group length = everything after the 12 bytes of (0000,0000) itself.
        assert_eq!(decoded.get_u16(0).map(|_| ()), None, "group length is UL, not US");
        let group_length = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        assert_eq!(group_length, bytes.len() - 12);
        // Odd-length UID padded with NUL to even length.
        assert_eq!(bytes.len() % 2, 0);
    }

    #[test]
    fn failure_response_carries_status_and_comment() {
        let st = Status::failure(status::DATASET_DOES_NOT_MATCH, "SOPInstanceUID differs");
        let rsp = response(field::C_STORE_RSP, 3, "1.2", Some("1.2.3"), &st);
        let decoded = CommandSet::decode(&rsp.encode()).unwrap();
        assert_eq!(decoded.status(), Some(0xA900));
        assert_eq!(decoded.get_u16(element::MESSAGE_ID_BEING_RESPONDED_TO), Some(3));
        assert_eq!(decoded.get_text(element::ERROR_COMMENT).as_deref(), Some("SOPInstanceUID differs"));
        assert!(!decoded.has_data_set());
    }

    #[test]
    fn malformed_command_sets_are_errors_not_panics() {
        assert!(CommandSet::decode(&[0, 0, 0]).is_err());
        assert!(CommandSet::decode(&[0, 0, 0, 1, 255, 255, 255, 255]).is_err());
        assert!(CommandSet::decode(&[8, 0, 0x18, 0, 0, 0, 0, 0]).is_err());
        assert_eq!(CommandSet::decode(&[]).unwrap(), CommandSet::default());
    }
}
