//! Where each instance is stored: a template of literal text and `{Keyword}` placeholders,
//! parsed once at startup and rendered per instance into a relative path.

use std::fmt::{self, Write as _};
use std::path::PathBuf;

use super::sanitize::{make_component_safe, push_sanitized, MAX_VALUE_LEN};
use crate::dicom::attributes::{Attributes, EXTRACTED};

/// oxidicom's layout (without its `SERVICES/PACS/` prefix): per calling AE title, patient,
/// study, series and instance.
pub const DEFAULT_PATH_TEMPLATE: &str = "{CallingAET}/{PatientID}-{PatientName}-{PatientBirthDate}/{StudyDescription}-{AccessionNumber}-{StudyDate}/{SeriesNumber:05}-{SeriesDescription}-{SeriesInstanceUID:hash7}/{InstanceNumber:04}-{SOPInstanceUID}.dcm";

/// Placeholders that come from the association rather than the dataset.
const CALLING_AET: &str = "CallingAET";
const CALLED_AET: &str = "CalledAET";

/// Widest `{Keyword:hashN}`: a 64-bit hash has at most 16 hex digits.
const MAX_HASH_DIGITS: usize = 16;

/// What a template is rendered from, for one instance.
#[derive(Debug, Clone, Copy)]
pub struct PathContext<'a> {
    pub attributes: &'a Attributes,
    pub calling_aet: &'a str,
    pub called_aet: &'a str,
}

/// A parsed path template.
///
/// Syntax: literal text, `/` between path components, and placeholders:
/// - `{Keyword}`: the value of any attribute in [`EXTRACTED`], or `CallingAET` / `CalledAET`;
/// - `{Keyword:0N}`: an integer value zero-padded to N digits (1 ≤ N ≤ 64). Like oxidicom's
///   `{:0>N}`, a value that is not an unsigned integer is padded with `0` on the left to N
///   characters as text (`"ab"` → `"000ab"`);
/// - `{Keyword:hashN}`: the first N (1 ≤ N ≤ 16) hex digits of
///   `format!("{:x}", seahash::hash(value))`, oxidicom's series hash, computed on the value
///   before sanitising so that paths match oxidicom's;
/// - `{{` and `}}` for literal braces.
///
/// Rendering: every value is sanitised (see the `sanitize` module: ASCII letters, digits, `.`
/// and `-` kept, other runs replaced by `_`, at most 64 bytes). **A missing or empty value is
/// rendered as the keyword itself**, unformatted (a study without a description lands in
/// `StudyDescription-…`), as oxidicom does for its optional attributes. Unlike oxidicom,
/// this also applies to PatientName and PatientBirthDate (oxidicom leaves those empty).
/// Each component is then bounded to 255 bytes and is never empty, `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    components: Vec<Vec<Segment>>,
    /// Enough for a typical rendered path, so rendering allocates once.
    capacity_hint: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Value { source: Source, format: Format },
}

/// Where a placeholder's value comes from; holds the keyword, which is also its placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Attribute(&'static str),
    CallingAet,
    CalledAet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Plain,
    ZeroPad(usize),
    Hash(usize),
}

/// Why a path template was refused; positions are byte offsets into the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    UnknownPlaceholder { keyword: String, position: usize },
    BadFormatSpec { placeholder: String, position: usize },
    UnbalancedBrace { position: usize },
    ControlCharacter { position: usize },
    Absolute,
    EmptyComponent { position: usize },
    DotComponent { position: usize },
    NoSopInstanceUidInFileName,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownPlaceholder { keyword, position } => {
                write!(
                    f,
                    "unknown placeholder {{{keyword}}} at byte {position}; accepted: {CALLING_AET}, {CALLED_AET}"
                )?;
                EXTRACTED.iter().try_for_each(|(_, k)| write!(f, ", {k}"))
            }
            Self::BadFormatSpec { placeholder, position } => write!(
                f,
                "bad format spec in {{{placeholder}}} at byte {position}; accepted: \
                 {{Keyword:0N}} (zero-pad an integer to N digits, N from 1 to {MAX_VALUE_LEN}) and \
                 {{Keyword:hashN}} (first N hex digits of the value's seahash, N from 1 to {MAX_HASH_DIGITS})"
            ),
            Self::UnbalancedBrace { position } => write!(
                f,
                "unbalanced brace at byte {position}; placeholders are {{Keyword}}, \
                 and a literal brace is written {{{{ or }}}}"
            ),
            Self::ControlCharacter { position } => {
                write!(f, "control character at byte {position}; file names may not contain them")
            }
            Self::Absolute => f.write_str("the template starts with '/', but must be relative to the storage root"),
            Self::EmptyComponent { position } => {
                write!(f, "empty path component ('//' or a trailing '/') at byte {position}")
            }
            Self::DotComponent { position } => write!(
                f,
                "path component '.' or '..' at byte {position}; \
                 files must stay inside the storage root"
            ),
            Self::NoSopInstanceUidInFileName => f.write_str(
                "the last component (the file name) must contain {SOPInstanceUID}, \
                 or different instances would be stored in the same file",
            ),
        }
    }
}

impl std::error::Error for TemplateError {}

impl PathTemplate {
    /// Parses a template (syntax on [`PathTemplate`]); errors say what is wrong and what is
    /// accepted.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        if let Some((position, _)) = template.char_indices().find(|(_, c)| c.is_control()) {
            return Err(TemplateError::ControlCharacter { position });
        }
        if template.starts_with('/') {
            return Err(TemplateError::Absolute);
        }
        let mut components = Vec::new();
        let mut position = 0;
        for text in template.split('/') {
            components.push(parse_component(text, position)?);
            position += text.len() + 1;
        }
        let file_name = components.last().expect("split yields at least one component");
        let sop_instance_uid = Segment::Value { source: Source::Attribute("SOPInstanceUID"), format: Format::Plain };
        if !file_name.contains(&sop_instance_uid) {
            return Err(TemplateError::NoSopInstanceUidInFileName);
        }
        let capacity_hint = template.len() + components.iter().flatten().count() * 32;
        Ok(Self { components, capacity_hint })
    }

    /// The relative path of one instance: every component sanitised; never empty, never
    /// absolute, never containing `.` or `..` components.
    pub fn render(&self, ctx: &PathContext) -> PathBuf {
        let mut path = String::with_capacity(self.capacity_hint);
        for (i, component) in self.components.iter().enumerate() {
            if i > 0 {
                path.push('/');
            }
            let start = path.len();
            for segment in component {
                segment.render(ctx, &mut path);
            }
            make_component_safe(&mut path, start);
        }
        PathBuf::from(path)
    }
}

/// Parses the text between two `/` (starting at byte `offset` of the template) into segments.
fn parse_component(text: &str, offset: usize) -> Result<Vec<Segment>, TemplateError> {
    if text.is_empty() {
        return Err(TemplateError::EmptyComponent { position: offset });
    }
    if text == "." || text == ".." {
        return Err(TemplateError::DotComponent { position: offset });
    }
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        let position = offset + (text.len() - rest.len()) + i;
        let brace = &rest[i..=i];
        literal.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(after_escape) = after.strip_prefix(brace) {
            literal.push_str(brace);
            rest = after_escape;
            continue;
        }
        let inner_end = match (brace, after.find(['{', '}'])) {
            ("{", Some(end)) if after[end..].starts_with('}') => end,
            _ => return Err(TemplateError::UnbalancedBrace { position }),
        };
        if !literal.is_empty() {
            segments.push(Segment::Literal(std::mem::take(&mut literal)));
        }
        segments.push(parse_placeholder(&after[..inner_end], position)?);
        rest = &after[inner_end + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

/// Parses `Keyword` or `Keyword:spec`, the inside of a placeholder.
fn parse_placeholder(inner: &str, position: usize) -> Result<Segment, TemplateError> {
    let (keyword, spec) = match inner.split_once(':') {
        Some((keyword, spec)) => (keyword, Some(spec)),
        None => (inner, None),
    };
    let source = Source::from_keyword(keyword)
        .ok_or_else(|| TemplateError::UnknownPlaceholder { keyword: keyword.to_string(), position })?;
    let format = match spec {
        None => Format::Plain,
        Some(spec) => Format::parse(spec)
            .ok_or_else(|| TemplateError::BadFormatSpec { placeholder: inner.to_string(), position })?,
    };
    Ok(Segment::Value { source, format })
}

impl Source {
    fn from_keyword(keyword: &str) -> Option<Self> {
        match keyword {
            CALLING_AET => Some(Self::CallingAet),
            CALLED_AET => Some(Self::CalledAet),
            _ => EXTRACTED.iter().find(|(_, k)| *k == keyword).map(|(_, k)| Self::Attribute(k)),
        }
    }

    fn keyword(self) -> &'static str {
        match self {
            Self::Attribute(keyword) => keyword,
            Self::CallingAet => CALLING_AET,
            Self::CalledAet => CALLED_AET,
        }
    }

    fn value<'a>(self, ctx: &PathContext<'a>) -> Option<&'a str> {
        match self {
            Self::Attribute(keyword) => ctx.attributes.get(keyword),
            Self::CallingAet => Some(ctx.calling_aet),
            Self::CalledAet => Some(ctx.called_aet),
        }
    }
}

impl Format {
    /// `0N` or `hashN`; None for anything else.
    fn parse(spec: &str) -> Option<Self> {
        if let Some(digits) = spec.strip_prefix("hash") {
            parse_bounded(digits, MAX_HASH_DIGITS).map(Self::Hash)
        } else {
            let digits = spec.strip_prefix('0')?;
            parse_bounded(digits, MAX_VALUE_LEN).map(Self::ZeroPad)
        }
    }

    /// Appends the formatted, sanitised `value`; false (nothing appended) if it is blank.
    fn push(self, path: &mut String, value: &str) -> bool {
        match self {
            Self::Plain => push_sanitized(path, value),
            Self::ZeroPad(width) => push_zero_padded(path, value, width),
            Self::Hash(digits) => push_hash(path, value, digits),
        }
    }
}

/// A decimal number from 1 to `max`, digits only (no sign, no spaces).
fn parse_bounded(digits: &str, max: usize) -> Option<usize> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| (1..=max).contains(n))
}

impl Segment {
    fn render(&self, ctx: &PathContext, path: &mut String) {
        match self {
            Self::Literal(text) => path.push_str(text),
            Self::Value { source, format } => {
                let rendered = match source.value(ctx) {
                    Some(value) => format.push(path, value),
                    None => false,
                };
                if !rendered {
                    path.push_str(source.keyword());
                }
            }
        }
    }
}

/// oxidicom's `{:0>N}` on its "maybe u32": integers are padded as numbers (`007` → `00007`),
/// anything else as sanitised text.
fn push_zero_padded(path: &mut String, value: &str, width: usize) -> bool {
    if let Ok(n) = value.trim().parse::<u32>() {
        write!(path, "{n:0width$}").expect("writing to a String cannot fail");
        return true;
    }
    let start = path.len();
    if !push_sanitized(path, value) {
        return false;
    }
    let len = path.len() - start; // ASCII: bytes are characters
    if len < width {
        path.insert_str(start, &"0".repeat(width - len));
    }
    true
}

/// oxidicom's series hash: hex seahash of the trimmed value without NULs, first `digits`.
/// Hex digits need no sanitising.
fn push_hash(path: &mut String, value: &str, digits: usize) -> bool {
    let value = value.trim();
    if value.chars().all(|c| c == '\0') {
        return false;
    }
    let hash = if value.contains('\0') {
        seahash::hash(value.replace('\0', "").as_bytes())
    } else {
        seahash::hash(value.as_bytes())
    };
    let start = path.len();
    write!(path, "{hash:x}").expect("writing to a String cannot fail");
    path.truncate((start + digits).min(path.len()));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Component, Path};

    fn parse_err(template: &str) -> TemplateError {
        PathTemplate::parse(template).expect_err(template)
    }

    fn render(template: &str, attributes: &Attributes) -> PathBuf {
        let ctx = PathContext { attributes, calling_aet: "MODALITY", called_aet: "OXIDIP" };
        PathTemplate::parse(template).unwrap().render(&ctx)
    }

    fn attributes(pairs: &[(&str, &str)]) -> Attributes {
        let mut a = Attributes::default();
        for (keyword, value) in pairs {
            let tag = EXTRACTED.iter().find(|(_, k)| k == keyword).unwrap().0;
            a.set(tag, value.to_string());
        }
        a
    }

    fn oxidicom_hash(value: &str) -> String {
        format!("{:x}", seahash::hash(value.as_bytes()))
    }

    #[test]
    fn default_template_matches_oxidicom_layout() {
        // Two series of oxidicom's integration tests (tests/expected_files.txt and
        // tests/assertions/expected.rs); the expected paths are copied from there, with
        // "SERVICES/PACS/OXITESTORTHANC" replaced by our calling AE title.
        let a = attributes(&[
            ("PatientID", "02"),
            ("PatientName", "Jane^Doe"),
            ("PatientBirthDate", "19660101"),
            ("StudyDescription", "Hanke_Stadler^0024_transrep"),
            ("StudyDate", "20130717"),
            ("SeriesNumber", "401"),
            ("SeriesDescription", "anat-T1w"),
            ("SeriesInstanceUID", "1.2.826.0.1.3680043.2.1143.515404396022363061013111326823367652"),
            ("InstanceNumber", "1"),
            ("SOPInstanceUID", "1.2.826.0.1.3680043.2.1143.1590429688519720198888333603882344634"),
        ]);
        assert_eq!(
            render(DEFAULT_PATH_TEMPLATE, &a),
            Path::new(
                "MODALITY/02-Jane_Doe-19660101/Hanke_Stadler_0024_transrep-AccessionNumber-20130717/\
                 00401-anat-T1w-661b8fc/0001-1.2.826.0.1.3680043.2.1143.1590429688519720198888333603882344634.dcm"
            )
        );

        let a = attributes(&[
            ("PatientID", "1449c1d"),
            ("PatientName", "anonymized"),
            ("PatientBirthDate", "20090701"),
            ("StudyDescription", "MR-Brain w/o Contrast"),
            ("AccessionNumber", "98edede8b2"),
            ("StudyDate", "20130308"),
            ("SeriesNumber", "5"),
            ("SeriesDescription", "SAG MPRAGE 220 FOV"),
            ("SeriesInstanceUID", "1.3.12.2.1107.5.2.19.45152.2013030808061520200285270.0.0.0"),
            ("InstanceNumber", "12"),
            ("SOPInstanceUID", "1.2.3"),
        ]);
        assert_eq!(
            render(DEFAULT_PATH_TEMPLATE, &a),
            Path::new(
                "MODALITY/1449c1d-anonymized-20090701/MR-Brain_w_o_Contrast-98edede8b2-20130308/\
                 00005-SAG_MPRAGE_220_FOV-a27cf06/0012-1.2.3.dcm"
            )
        );
    }

    #[test]
    fn missing_and_blank_values_render_as_their_keyword() {
        let a = attributes(&[("SOPInstanceUID", "1.2"), ("PatientName", "  ")]);
        assert_eq!(
            render(DEFAULT_PATH_TEMPLATE, &a),
            PathBuf::from(
                "MODALITY/PatientID-PatientName-PatientBirthDate/StudyDescription-AccessionNumber-StudyDate/\
                 SeriesNumber-SeriesDescription-SeriesInstanceUID/InstanceNumber-1.2.dcm"
            )
        );
    }

    #[test]
    fn zero_padding_follows_oxidicom() {
        let t = "{SeriesNumber:05}/{SOPInstanceUID}";
        let with = |n: &str| render(t, &attributes(&[("SeriesNumber", n), ("SOPInstanceUID", "1")]));
        assert_eq!(with("7"), Path::new("00007/1"));
        assert_eq!(with("007"), Path::new("00007/1"));
        assert_eq!(with(" 42 "), Path::new("00042/1"));
        assert_eq!(with("123456"), Path::new("123456/1"));
        assert_eq!(with("-3"), Path::new("000-3/1"));
        assert_eq!(with("a/b"), Path::new("00a_b/1"));
    }

    #[test]
    fn hash_prefix_and_association_placeholders() {
        let a = attributes(&[("SOPInstanceUID", "1.2.3")]);
        let full = oxidicom_hash("1.2.3");
        assert_eq!(
            render("{CalledAET}/{CallingAET}-{SOPInstanceUID:hash16}-{SOPInstanceUID}", &a),
            PathBuf::from(format!("OXIDIP/MODALITY-{full}-1.2.3"))
        );
        assert_eq!(render("{SOPInstanceUID:hash3}{SOPInstanceUID}", &a), PathBuf::from(format!("{}1.2.3", &full[..3])));
    }

    #[test]
    fn escaped_braces_are_literal() {
        let a = attributes(&[("SOPInstanceUID", "9")]);
        assert_eq!(render("{{x}}/{{{SOPInstanceUID}}}", &a), Path::new("{x}/{9}"));
    }

    #[test]
    fn hostile_values_stay_inside_the_root() {
        let hostile = [
            "../../etc/passwd",
            "/abs",
            "a\0b",
            "\x1b[31m",
            "..",
            ".",
            "",
            "\0",
            "山田^太郎",
            "Γιώργος",
            &"x".repeat(10_000),
            &"日本".repeat(5_000),
            "C:\\x",
        ];
        let templates = [
            DEFAULT_PATH_TEMPLATE,
            "{PatientName}/{StudyDescription}{SeriesDescription}/{SOPInstanceUID}",
            "{PatientName}{PatientID}{StudyDescription}{SeriesDescription}{AccessionNumber}/x{SOPInstanceUID}",
        ];
        for value in hostile {
            let pairs: Vec<(&str, &str)> = EXTRACTED.iter().map(|(_, k)| (*k, value)).collect();
            let a = attributes(&pairs);
            let ctx = PathContext { attributes: &a, calling_aet: value, called_aet: value };
            for template in templates {
                let path = PathTemplate::parse(template).unwrap().render(&ctx);
                assert_stays_inside(&path, value);
            }
        }
    }

    fn assert_stays_inside(path: &Path, value: &str) {
        let value = value.escape_debug();
        assert!(path.is_relative(), "{path:?} from {value}");
        let components: Vec<_> = path.components().collect();
        assert!(!components.is_empty());
        for c in components {
            let Component::Normal(name) = c else { panic!("{c:?} in {path:?} from {value}") };
            let name = name.to_str().unwrap();
            assert!(name.len() <= 255, "{} bytes from {value}", name.len());
            assert!(!name.contains(['\0', '\\']) && !name.chars().any(char::is_control));
        }
    }

    #[test]
    fn very_long_file_names_keep_the_uid_and_extension() {
        let uid = "1.2.840.99999.1";
        let a = attributes(&[
            ("SOPInstanceUID", uid),
            ("PatientName", &"n".repeat(100)),
            ("PatientID", &"i".repeat(100)),
            ("StudyDescription", &"s".repeat(100)),
            ("SeriesDescription", &"d".repeat(100)),
        ]);
        // Four values bounded to 64 bytes, the separators and the UID: over 255 bytes.
        let path = render("{PatientName}-{PatientID}-{StudyDescription}-{SeriesDescription}-{SOPInstanceUID}.dcm", &a);
        let name = path.to_str().unwrap();
        assert_eq!(name.len(), 255);
        assert!(name.ends_with(&format!("-{uid}.dcm")));
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let e = parse_err("{Nope}/{SOPInstanceUID}");
        assert_eq!(e, TemplateError::UnknownPlaceholder { keyword: "Nope".into(), position: 0 });
        let message = e.to_string();
        assert!(message.contains("{Nope}") && message.contains("CallingAET"));
        assert!(message.contains("SeriesInstanceUID"));

        for spec in ["x", "0", "00", "065", "hash", "hash0", "hash17", "+5", "0+5", "5"] {
            let template = format!("{{SeriesNumber:{spec}}}/{{SOPInstanceUID}}");
            assert!(matches!(parse_err(&template), TemplateError::BadFormatSpec { .. }), "{template}");
        }
        assert!(parse_err("{SeriesNumber:x}/{SOPInstanceUID}").to_string().contains("{Keyword:hashN}"));

        for (template, position) in [
            ("a/{SOPInstanceUID", 2),
            ("a}/{SOPInstanceUID}", 1),
            ("a/{SOP{InstanceUID}}", 2),
            ("a{/b}/{SOPInstanceUID}", 1),
        ] {
            assert_eq!(parse_err(template), TemplateError::UnbalancedBrace { position }, "{template}");
        }
        assert_eq!(parse_err("/data/{SOPInstanceUID}"), TemplateError::Absolute);
        assert_eq!(parse_err("a/../{SOPInstanceUID}"), TemplateError::DotComponent { position: 2 });
        assert_eq!(parse_err("./{SOPInstanceUID}"), TemplateError::DotComponent { position: 0 });
        assert_eq!(parse_err("a//{SOPInstanceUID}"), TemplateError::EmptyComponent { position: 2 });
        assert_eq!(parse_err("{SOPInstanceUID}/"), TemplateError::EmptyComponent { position: 17 });
        assert_eq!(parse_err("a\nb/{SOPInstanceUID}"), TemplateError::ControlCharacter { position: 1 });
        for template in ["{SOPInstanceUID}/x.dcm", "{SOPInstanceUID:hash16}.dcm"] {
            assert_eq!(parse_err(template), TemplateError::NoSopInstanceUidInFileName);
        }
    }

    #[test]
    fn components_never_start_with_a_dot() {
        let a = attributes(&[("SOPInstanceUID", "1")]);
        assert_eq!(render("..x/.{SOPInstanceUID}", &a), Path::new("_.x/_1"));
    }
}
