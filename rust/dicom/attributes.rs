//! The attributes oxidip reads from the leading part of every received dataset: what the
//! storage path template and registration need. Values are decoded text (per
//! SpecificCharacterSet), with the padding the standard allows trimmed (PS3.5 §6.2).

use serde::Serialize;

/// A DICOM tag as (group << 16) | element.
pub type Tag = u32;

/// Declares `Attributes` with one optional text field per attribute, its keyword and tag,
/// so that the struct, the keyword lookup and the tag table can never disagree.
macro_rules! attributes {
    ($($field:ident => $keyword:literal, $tag:literal;)*) => {
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
        pub struct Attributes {
            $(#[serde(rename = $keyword)] pub $field: Option<String>,)*
        }

        /// (tag, keyword) of every extracted attribute, sorted by tag.
        pub const EXTRACTED: &[(Tag, &str)] = &[$(($tag, $keyword),)*];

        impl Attributes {
            /// The value of the attribute with this DICOM keyword, if extracted and present.
            pub fn get(&self, keyword: &str) -> Option<&str> {
                match keyword {
                    $($keyword => self.$field.as_deref(),)*
                    _ => None,
                }
            }

            /// Stores a decoded value for an extracted tag; other tags are ignored.
            pub fn set(&mut self, tag: Tag, value: String) {
                match tag {
                    $($tag => self.$field = Some(value),)*
                    _ => {}
                }
            }
        }
    };
}

attributes! {
    specific_character_set => "SpecificCharacterSet", 0x0008_0005;
    sop_class_uid => "SOPClassUID", 0x0008_0016;
    sop_instance_uid => "SOPInstanceUID", 0x0008_0018;
    study_date => "StudyDate", 0x0008_0020;
    study_time => "StudyTime", 0x0008_0030;
    accession_number => "AccessionNumber", 0x0008_0050;
    modality => "Modality", 0x0008_0060;
    study_description => "StudyDescription", 0x0008_1030;
    series_description => "SeriesDescription", 0x0008_103E;
    patient_name => "PatientName", 0x0010_0010;
    patient_id => "PatientID", 0x0010_0020;
    patient_birth_date => "PatientBirthDate", 0x0010_0030;
    patient_sex => "PatientSex", 0x0010_0040;
    patient_age => "PatientAge", 0x0010_1010;
    protocol_name => "ProtocolName", 0x0018_1030;
    study_instance_uid => "StudyInstanceUID", 0x0020_000D;
    series_instance_uid => "SeriesInstanceUID", 0x0020_000E;
    series_number => "SeriesNumber", 0x0020_0011;
    instance_number => "InstanceNumber", 0x0020_0013;
    number_of_series_related_instances => "NumberOfSeriesRelatedInstances", 0x0020_1209;
}

/// The last tag of the top-level dataset we need: parsing can stop once past it.
pub const LAST_EXTRACTED_TAG: Tag = EXTRACTED[EXTRACTED.len() - 1].0;

/// Whether a top-level tag is one we extract.
pub fn is_extracted(tag: Tag) -> bool {
    EXTRACTED.binary_search_by_key(&tag, |(t, _)| *t).is_ok()
}

/// Keyword of an extracted attribute, for messages.
pub fn keyword_of(tag: Tag) -> Option<&'static str> {
    EXTRACTED.iter().find(|(t, _)| *t == tag).map(|(_, k)| *k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_so_binary_search_works() {
        assert!(EXTRACTED.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(LAST_EXTRACTED_TAG, 0x0020_1209);
    }

    #[test]
    fn set_and_get_by_keyword() {
        let mut a = Attributes::default();
        a.set(0x0010_0020, "P1".into());
        a.set(0x7FE0_0010, "ignored".into());
        assert_eq!(a.get("PatientID"), Some("P1"));
        assert_eq!(a.patient_id.as_deref(), Some("P1"));
        assert_eq!(a.get("PixelData"), None);
        assert!(is_extracted(0x0020_000E));
        assert!(!is_extracted(0x0020_0012));
        assert_eq!(keyword_of(0x0008_0018), Some("SOPInstanceUID"));
    }
}
