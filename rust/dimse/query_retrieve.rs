//! The messages of the Query/Retrieve services (PS3.4 annex C, PS3.7 §9.1.2 to §9.1.4,
//! §9.3.2 to §9.3.4): C-FIND, C-MOVE and C-GET requests and responses, C-CANCEL, and the
//! sub-operation counts of retrieve responses. Their identifiers are data sets, sent and
//! received as encoded bytes in the presentation context's transfer syntax.

use super::command::{element, field, CommandSet, NO_DATA_SET};
use super::status::Status;

/// Study Root Query/Retrieve Information Model SOP Classes (PS3.4 C.6.2).
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
pub const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";
/// Patient Root Query/Retrieve Information Model SOP Classes (PS3.4 C.6.1).
pub const PATIENT_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.1.1";
pub const PATIENT_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.1.2";
pub const PATIENT_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.1.3";

/// Priority (0000,0700): medium (PS3.7 §9.3.1.1).
pub const PRIORITY_MEDIUM: u16 = 0x0000;

/// CommandDataSetType of a message whose data set follows: any value but 0101H (PS3.7 §E.1).
const DATA_SET_PRESENT: u16 = 0x0000;

fn request(command_field: u16, message_id: u16, sop_class_uid: &str) -> CommandSet {
    let mut rq = CommandSet::default();
    rq.set_uid(element::AFFECTED_SOP_CLASS_UID, sop_class_uid)
        .set_u16(element::COMMAND_FIELD, command_field)
        .set_u16(element::MESSAGE_ID, message_id)
        .set_u16(element::PRIORITY, PRIORITY_MEDIUM)
        .set_u16(element::COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT);
    rq
}

/// A C-FIND-RQ (PS3.7 §9.3.2.1); its identifier follows as the data set.
pub fn c_find_rq(message_id: u16, sop_class_uid: &str) -> CommandSet {
    request(field::C_FIND_RQ, message_id, sop_class_uid)
}

/// A C-GET-RQ (PS3.7 §9.3.3.1); its identifier follows as the data set.
pub fn c_get_rq(message_id: u16, sop_class_uid: &str) -> CommandSet {
    request(field::C_GET_RQ, message_id, sop_class_uid)
}

/// A C-MOVE-RQ (PS3.7 §9.3.4.1) toward the AE title `destination`; its identifier follows.
pub fn c_move_rq(message_id: u16, sop_class_uid: &str, destination: &str) -> CommandSet {
    let mut rq = request(field::C_MOVE_RQ, message_id, sop_class_uid);
    rq.set_text(element::MOVE_DESTINATION, destination);
    rq
}

/// A C-CANCEL-RQ (PS3.7 §9.3.2.3) of the operation `message_id`: it has no response; the
/// operation ends with a Cancel status (FE00) or its usual end.
pub fn c_cancel_rq(message_id: u16) -> CommandSet {
    let mut rq = CommandSet::default();
    rq.set_u16(element::COMMAND_FIELD, field::C_CANCEL_RQ)
        .set_u16(element::MESSAGE_ID_BEING_RESPONDED_TO, message_id)
        .set_u16(element::COMMAND_DATA_SET_TYPE, NO_DATA_SET);
    rq
}

/// A C-FIND-RSP (PS3.7 §9.3.2.2): a pending one carries a matching identifier (`identifier`
/// true, the data set follows), the final one none.
pub fn c_find_rsp(message_id: u16, sop_class_uid: &str, status: &Status, identifier: bool) -> CommandSet {
    let mut rsp = super::command::response(field::C_FIND_RSP, message_id, sop_class_uid, None, status);
    if identifier {
        rsp.set_u16(element::COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT);
    }
    rsp
}

/// The sub-operation counts of a C-GET-RSP or C-MOVE-RSP (PS3.7 §9.3.3.2, §9.3.4.2).
/// Remaining is absent from final responses; the others may be absent from pending ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubOperations {
    pub remaining: Option<u16>,
    pub completed: Option<u16>,
    pub failed: Option<u16>,
    pub warning: Option<u16>,
}

impl SubOperations {
    /// The counts a response carries.
    pub fn of(response: &CommandSet) -> SubOperations {
        SubOperations {
            remaining: response.get_u16(element::NUMBER_OF_REMAINING_SUB_OPERATIONS),
            completed: response.get_u16(element::NUMBER_OF_COMPLETED_SUB_OPERATIONS),
            failed: response.get_u16(element::NUMBER_OF_FAILED_SUB_OPERATIONS),
            warning: response.get_u16(element::NUMBER_OF_WARNING_SUB_OPERATIONS),
        }
    }

    fn set_on(&self, response: &mut CommandSet) {
        let counts = [
            (element::NUMBER_OF_REMAINING_SUB_OPERATIONS, self.remaining),
            (element::NUMBER_OF_COMPLETED_SUB_OPERATIONS, self.completed),
            (element::NUMBER_OF_FAILED_SUB_OPERATIONS, self.failed),
            (element::NUMBER_OF_WARNING_SUB_OPERATIONS, self.warning),
        ];
        for (tag, count) in counts {
            if let Some(count) = count {
                response.set_u16(tag, count);
            }
        }
    }
}

/// A C-GET-RSP or C-MOVE-RSP (`command_field`, PS3.7 §9.3.3.2, §9.3.4.2) with its
/// sub-operation counts; `identifier` true when a data set follows (the Failed SOP Instance
/// UID List of a final response).
pub fn retrieve_rsp(
    command_field: u16,
    message_id: u16,
    sop_class_uid: &str,
    status: &Status,
    counts: &SubOperations,
    identifier: bool,
) -> CommandSet {
    let mut rsp = super::command::response(command_field, message_id, sop_class_uid, None, status);
    counts.set_on(&mut rsp);
    if identifier {
        rsp.set_u16(element::COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT);
    }
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dimse::status;

    fn round_trip(command: &CommandSet) -> CommandSet {
        CommandSet::decode(&command.encode()).unwrap()
    }

    #[test]
    fn requests_carry_their_fields_and_announce_the_identifier() {
        let find = round_trip(&c_find_rq(5, STUDY_ROOT_FIND));
        assert_eq!(find.command_field(), Some(field::C_FIND_RQ));
        assert_eq!(find.message_id(), Some(5));
        assert_eq!(find.affected_sop_class_uid().as_deref(), Some(STUDY_ROOT_FIND));
        assert_eq!(find.get_u16(element::PRIORITY), Some(PRIORITY_MEDIUM));
        assert!(find.has_data_set());
        let get = round_trip(&c_get_rq(6, STUDY_ROOT_GET));
        assert_eq!((get.command_field(), get.has_data_set()), (Some(field::C_GET_RQ), true));
        let moved = round_trip(&c_move_rq(7, STUDY_ROOT_MOVE, "DEST"));
        assert_eq!(moved.command_field(), Some(field::C_MOVE_RQ));
        assert_eq!(moved.get_text(element::MOVE_DESTINATION).as_deref(), Some("DEST"));
        let cancel = round_trip(&c_cancel_rq(5));
        assert_eq!(cancel.command_field(), Some(field::C_CANCEL_RQ));
        assert_eq!(cancel.get_u16(element::MESSAGE_ID_BEING_RESPONDED_TO), Some(5));
        assert!(!cancel.has_data_set());
    }

    #[test]
    fn responses_carry_status_counts_and_identifier_presence() {
        let pending = Status { code: status::PENDING, comment: None };
        let find = round_trip(&c_find_rsp(5, STUDY_ROOT_FIND, &pending, true));
        assert_eq!((find.status(), find.has_data_set()), (Some(status::PENDING), true));
        let done = round_trip(&c_find_rsp(5, STUDY_ROOT_FIND, &Status::success(), false));
        assert_eq!((done.status(), done.has_data_set()), (Some(0), false));

        let counts = SubOperations { remaining: Some(3), completed: Some(1), failed: Some(0), warning: Some(0) };
        let get = round_trip(&retrieve_rsp(field::C_GET_RSP, 6, STUDY_ROOT_GET, &pending, &counts, false));
        assert_eq!(get.command_field(), Some(field::C_GET_RSP));
        assert_eq!(SubOperations::of(&get), counts);
        let final_counts = SubOperations { remaining: None, ..counts };
        let failed = Status::failure(status::SUB_OPERATIONS_WITH_FAILURES, "1 failed");
        let moved = round_trip(&retrieve_rsp(field::C_MOVE_RSP, 7, STUDY_ROOT_MOVE, &failed, &final_counts, true));
        assert_eq!(moved.command_field(), Some(field::C_MOVE_RSP));
        assert_eq!(SubOperations::of(&moved), final_counts);
        assert!(moved.has_data_set());
    }
}
