//! Making attacker-controlled tag values safe as parts of file names.
//!
//! Values follow oxidicom's rule (its `sanitize.rs`, after pypx): trim surrounding whitespace,
//! drop NULs, then replace every run of characters other than ASCII letters, digits, `.` and
//! `-` with one `_`. We chose it over a deny-list (`/`, `\`, controls, `<>:"|?*`) because:
//! - paths then match oxidicom's byte for byte (`Jane^Doe` → `Jane_Doe`, `T1 MPRAGE` →
//!   `T1_MPRAGE`), which existing consumers of that layout rely on;
//! - it is a strict superset of the deny-list, and the output is plain ASCII, so there are no
//!   Unicode tricks (bidi overrides, invisible or look-alike characters, NFC/NFD differences)
//!   and no shell metacharacters or spaces in file names.
//!
//! The price: non-ASCII text (Japanese, Greek names) collapses to `_`. Paths stay unique
//! because they also hold PatientID and the UIDs; the registered attributes keep the real text.

/// Longest sanitised value, in bytes (the output is ASCII, so also in characters). 64 is the
/// longest LO or UI value and PN component group (PS3.5 §6.2), so only hostile values are
/// cut; they keep their beginning.
pub const MAX_VALUE_LEN: usize = 64;

/// Longest path component most filesystems accept (NAME_MAX).
pub const MAX_COMPONENT_LEN: usize = 255;

/// What a component that would be empty, `.` or `..` becomes.
const SAFE_COMPONENT: &str = "_";

/// Appends the sanitised `value` to `out`, at most [`MAX_VALUE_LEN`] bytes of it. Returns
/// false, having appended nothing, if nothing is left (the value was blank or all NULs).
pub fn push_sanitized(out: &mut String, value: &str) -> bool {
    let start = out.len();
    let mut in_replaced_run = false;
    for c in value.trim().chars().filter(|&c| c != '\0') {
        if out.len() - start == MAX_VALUE_LEN {
            break;
        }
        if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
            out.push(c);
            in_replaced_run = false;
        } else if !in_replaced_run {
            out.push('_');
            in_replaced_run = true;
        }
    }
    out.len() > start
}

/// Makes `path[start..]`, one rendered path component, safe to create: at most
/// [`MAX_COMPONENT_LEN`] bytes, never empty, `.` or `..`, and never starting with a dot: that
/// keeps stored files visible and out of oxidip's own `.oxidip*` directories under the root
/// (a peer may well call itself `.oxidip-journal`).
///
/// An over-long component keeps its *end*: that is where the file name's `{SOPInstanceUID}`
/// and extension are in any sensible template (and must be, for uniqueness), while the
/// beginning usually holds descriptive text. Only custom templates with many placeholders in
/// one component can get there: values are bounded to [`MAX_VALUE_LEN`].
pub fn make_component_safe(path: &mut String, start: usize) {
    let len = path.len() - start;
    if len > MAX_COMPONENT_LEN {
        let mut cut = start + (len - MAX_COMPONENT_LEN);
        while !path.is_char_boundary(cut) {
            cut += 1;
        }
        path.drain(start..cut);
    }
    if matches!(&path[start..], "" | "." | "..") {
        path.truncate(start);
        path.push_str(SAFE_COMPONENT);
    } else if path[start..].starts_with('.') {
        path.replace_range(start..start + 1, "_");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sanitized(value: &str) -> String {
        let mut out = String::new();
        push_sanitized(&mut out, value);
        out
    }

    /// The component made safe as the last one of a path, checking the rest is untouched.
    fn safe_component(component: &str) -> String {
        let mut path = format!("parent/{component}");
        make_component_safe(&mut path, "parent/".len());
        let safe = path.strip_prefix("parent/").expect("parent untouched");
        safe.to_string()
    }

    #[test]
    fn matches_oxidicom_on_ordinary_values() {
        assert_eq!(sanitized("Jane^Doe"), "Jane_Doe");
        assert_eq!(sanitized("Hanke Stadler 0024 transrep"), "Hanke_Stadler_0024_transrep");
        assert_eq!(sanitized("anat-T1w"), "anat-T1w");
        assert_eq!(sanitized("1.2.840.113619.2.1"), "1.2.840.113619.2.1");
        assert_eq!(sanitized("  padded  "), "padded");
        assert_eq!(sanitized("ORIGINAL\\PRIMARY"), "ORIGINAL_PRIMARY");
    }

    #[test]
    fn hostile_values_lose_every_separator_and_control() {
        assert_eq!(sanitized("../../etc/passwd"), ".._.._etc_passwd");
        assert_eq!(sanitized("/abs"), "_abs");
        assert_eq!(sanitized("a\0b"), "ab");
        assert_eq!(sanitized("\x1b[31m"), "_31m");
        assert_eq!(sanitized("a<>:\"|?*b"), "a_b");
        assert_eq!(sanitized("x\u{7f}\u{85}\u{202e}y"), "x_y");
        assert_eq!(sanitized("C:\\Windows"), "C_Windows");
    }

    #[test]
    fn non_ascii_collapses_like_oxidicom() {
        assert_eq!(sanitized("山田^太郎"), "_");
        assert_eq!(sanitized("Yamada^Tarou=山田^太郎=やまだ^たろう"), "Yamada_Tarou_");
        assert_eq!(sanitized("Παπαδόπουλος"), "_");
    }

    #[test]
    fn blank_values_append_nothing() {
        let mut out = String::from("x");
        assert!(!push_sanitized(&mut out, ""));
        assert!(!push_sanitized(&mut out, " \t\0\0 "));
        assert_eq!(out, "x");
    }

    #[test]
    fn values_are_bounded_keeping_their_start() {
        let long = "a".repeat(10_000);
        assert_eq!(sanitized(&long), "a".repeat(MAX_VALUE_LEN));
        let long_non_ascii = "é".repeat(10_000);
        assert_eq!(sanitized(&long_non_ascii), "_");
        let mixed = format!("{}{}", "b", "/é".repeat(10_000));
        assert_eq!(sanitized(&mixed), "b_");
    }

    #[test]
    fn dot_components_and_empty_are_replaced() {
        assert_eq!(safe_component(".."), "_");
        assert_eq!(safe_component("."), "_");
        assert_eq!(safe_component(""), "_");
        assert_eq!(safe_component("..."), "_..");
        assert_eq!(safe_component(".hidden"), "_hidden");
        assert_eq!(safe_component(".oxidip-journal"), "_oxidip-journal");
    }

    #[test]
    fn long_components_keep_their_end_on_a_char_boundary() {
        let name = format!("{}-1.2.3.dcm", "x".repeat(1_000));
        let safe = safe_component(&name);
        assert_eq!(safe.len(), MAX_COMPONENT_LEN);
        assert!(safe.ends_with("x-1.2.3.dcm"));

        // Three-byte characters: the cut may not split one.
        let wide = format!("{}end", "日".repeat(200));
        let safe = safe_component(&wide);
        assert!(safe.len() <= MAX_COMPONENT_LEN && safe.len() > MAX_COMPONENT_LEN - 3);
        assert!(safe.ends_with("日end"));
    }
}
