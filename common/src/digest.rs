//! The one check for a SHA-256 written in hexadecimal: in the agent's
//! config, in the generator's download table and in the release API's
//! answer.

/// `text` as 64 lower-case hexadecimal characters, or why it is not one.
pub fn parse_sha256_hex(text: &str) -> Result<String, String> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!("{text:?} is not 64 hexadecimal characters"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixty_four_hex_digits_in_lower_case() {
        let upper = "BA46BA7CE3A4D7236B16FBE44419FB453BC08F866B24F04D549EC89F1722A29E";
        assert_eq!(parse_sha256_hex(upper).unwrap(), upper.to_ascii_lowercase());
        for bad in ["", "abc", &upper[1..], &format!("{}g", &upper[1..])] {
            assert!(parse_sha256_hex(bad).is_err(), "{bad}");
        }
    }
}
