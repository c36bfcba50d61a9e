//! Language tags as players want them. Containers tag tracks with ISO 639-2 codes
//! (`eng`, `fre`/`fra`); HLS's `LANGUAGE` and DASH's `lang` are BCP 47 (RFC 5646),
//! whose primary tag is the shortest ISO 639 code: `en`, `fr`.

/// ISO 639-2 (bibliographic and terminology forms), ISO 639-1, English name.
const LANGUAGES: &[(&str, &str, &str)] = &[
    ("ara", "ar", "Arabic"),
    ("ben", "bn", "Bengali"),
    ("bul", "bg", "Bulgarian"),
    ("cat", "ca", "Catalan"),
    ("ces", "cs", "Czech"),
    ("cze", "cs", "Czech"),
    ("chi", "zh", "Chinese"),
    ("zho", "zh", "Chinese"),
    ("dan", "da", "Danish"),
    ("deu", "de", "German"),
    ("ger", "de", "German"),
    ("dut", "nl", "Dutch"),
    ("nld", "nl", "Dutch"),
    ("ell", "el", "Greek"),
    ("gre", "el", "Greek"),
    ("eng", "en", "English"),
    ("fin", "fi", "Finnish"),
    ("fra", "fr", "French"),
    ("fre", "fr", "French"),
    ("heb", "he", "Hebrew"),
    ("hin", "hi", "Hindi"),
    ("hrv", "hr", "Croatian"),
    ("hun", "hu", "Hungarian"),
    ("ind", "id", "Indonesian"),
    ("ita", "it", "Italian"),
    ("jpn", "ja", "Japanese"),
    ("kor", "ko", "Korean"),
    ("msa", "ms", "Malay"),
    ("may", "ms", "Malay"),
    ("nor", "no", "Norwegian"),
    ("pol", "pl", "Polish"),
    ("por", "pt", "Portuguese"),
    ("ron", "ro", "Romanian"),
    ("rum", "ro", "Romanian"),
    ("rus", "ru", "Russian"),
    ("slk", "sk", "Slovak"),
    ("slo", "sk", "Slovak"),
    ("spa", "es", "Spanish"),
    ("srp", "sr", "Serbian"),
    ("swe", "sv", "Swedish"),
    ("tha", "th", "Thai"),
    ("tur", "tr", "Turkish"),
    ("ukr", "uk", "Ukrainian"),
    ("vie", "vi", "Vietnamese"),
];

/// A container's language tag as BCP 47: a known ISO 639-2 code becomes its
/// two-letter form; anything else that looks like a language tag (letters, digits
/// and `-`, starting with a letter) is kept, lowercased; the rest, and `und`, is `None`.
pub fn bcp47(tag: &str) -> Option<String> {
    let tag = tag.trim().to_ascii_lowercase();
    if let Some((_, short, _)) = LANGUAGES.iter().find(|(long, ..)| *long == tag) {
        return Some(short.to_string());
    }
    let well_formed = tag.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && tag.len() <= 35
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    (well_formed && tag != "und").then_some(tag)
}

/// The English name of a language tag (ISO 639-2 or -1), if it is a known one.
pub fn name(tag: &str) -> Option<&'static str> {
    let tag = tag.trim().to_ascii_lowercase();
    LANGUAGES.iter().find(|(long, short, _)| *long == tag || *short == tag).map(|(.., name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_tags_become_bcp47() {
        assert_eq!(bcp47("eng").as_deref(), Some("en"));
        assert_eq!(bcp47("FRE").as_deref(), Some("fr"));
        assert_eq!(bcp47("fra").as_deref(), Some("fr"));
        assert_eq!(bcp47("pt-BR").as_deref(), Some("pt-br"));
        // No two-letter form: ISO 639-2 is the BCP 47 primary tag.
        assert_eq!(bcp47("fil").as_deref(), Some("fil"));
        assert_eq!(bcp47("und"), None);
        assert_eq!(bcp47("en glish"), None);
        assert_eq!(bcp47("1ab"), None);
        assert_eq!(name("ger"), Some("German"));
        assert_eq!(name("de"), Some("German"));
        assert_eq!(name("xyz"), None);
    }
}
