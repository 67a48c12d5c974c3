//! Checksums and number rules that turn a digit run into a confirmed finding.

/// Luhn check over ASCII digits (other bytes are skipped).
pub(crate) fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let mut sum = 0u32;
    let mut n = 0usize;
    for (i, b) in digits.rev().enumerate() {
        let mut d = u32::from(b.wrapping_sub(b'0'));
        if d > 9 {
            return false;
        }
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        n += 1;
    }
    n > 0 && sum.is_multiple_of(10)
}

/// Whether the nine SSN digits (area, group, serial) are an issuable number.
pub(crate) fn ssn_valid(area: &[u8], group: &[u8], serial: &[u8]) -> bool {
    let num = |s: &[u8]| {
        s.iter()
            .fold(0u32, |acc, b| acc * 10 + u32::from(b.wrapping_sub(b'0')))
    };
    let (a, g, s) = (num(area), num(group), num(serial));
    a != 0 && a != 666 && a < 900 && g != 0 && s != 0
}

/// IBAN length for a country code, for the countries that publish one.
pub(crate) fn iban_length(country: [u8; 2]) -> Option<usize> {
    let len = match &country {
        b"AD" => 24,
        b"AE" => 23,
        b"AL" => 28,
        b"AT" => 20,
        b"AZ" => 28,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BR" => 29,
        b"CH" => 21,
        b"CR" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DK" => 18,
        b"DO" => 28,
        b"EE" => 20,
        b"EG" => 29,
        b"ES" => 24,
        b"FI" => 18,
        b"FO" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GE" => 22,
        b"GI" => 23,
        b"GL" => 18,
        b"GR" => 27,
        b"GT" => 28,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"JO" => 30,
        b"KW" => 30,
        b"KZ" => 20,
        b"LB" => 28,
        b"LC" => 32,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"MC" => 27,
        b"MD" => 24,
        b"ME" => 22,
        b"MK" => 19,
        b"MR" => 27,
        b"MT" => 31,
        b"MU" => 30,
        b"NL" => 18,
        b"NO" => 15,
        b"PK" => 24,
        b"PL" => 28,
        b"PS" => 29,
        b"PT" => 25,
        b"QA" => 29,
        b"RO" => 24,
        b"RS" => 22,
        b"SA" => 24,
        b"SC" => 31,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"TN" => 24,
        b"TR" => 26,
        b"UA" => 29,
        b"VA" => 22,
        b"VG" => 24,
        b"XK" => 20,
        _ => return None,
    };
    Some(len)
}

/// ISO 13616 mod-97 check over a compact IBAN (uppercase letters and digits).
pub(crate) fn iban_mod97(compact: &[u8]) -> bool {
    if compact.len() < 5 {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut r: u32 = 0;
    for &c in tail.iter().chain(head) {
        if c.is_ascii_digit() {
            r = (r * 10 + u32::from(c - b'0')) % 97;
        } else if c.is_ascii_uppercase() {
            r = (r * 100 + u32::from(c - b'A') + 10) % 97;
        } else {
            return false;
        }
    }
    r == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_test_cards_and_rejects_one_digit_off() {
        for ok in ["4111111111111111", "378282246310005", "30569309025904"] {
            assert!(luhn(ok.bytes()), "{ok}");
        }
        for bad in ["4111111111111112", "1234567812345678", "", "41x1"] {
            assert!(!luhn(bad.bytes()), "{bad}");
        }
    }

    #[test]
    fn ssn_rules() {
        assert!(ssn_valid(b"536", b"22", b"1234"));
        assert!(!ssn_valid(b"000", b"22", b"1234"));
        assert!(!ssn_valid(b"666", b"22", b"1234"));
        assert!(!ssn_valid(b"901", b"22", b"1234"));
        assert!(!ssn_valid(b"536", b"00", b"1234"));
        assert!(!ssn_valid(b"536", b"22", b"0000"));
    }

    #[test]
    fn iban_checks() {
        assert!(iban_mod97(b"DE89370400440532013000"));
        assert!(iban_mod97(b"GB82WEST12345698765432"));
        assert!(!iban_mod97(b"DE89370400440532013001"));
        assert!(!iban_mod97(b"DE8"));
        assert_eq!(iban_length(*b"DE"), Some(22));
        assert_eq!(iban_length(*b"ZZ"), None);
    }
}
