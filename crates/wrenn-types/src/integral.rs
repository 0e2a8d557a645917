//! Integer fields that also take a JSON number with an integral value (`145.0`): JSON Schema's
//! `integer` is a value, not a spelling, so a document that says `integer` must accept both.
//! A fraction, a value out of the field's range, or a float too large to be exact (beyond
//! 2^53, where `-9223372036854775809` parses to the in-range `-2^63`) is still refused.
//!
//! Use with `#[serde(deserialize_with = "crate::integral::deserialize")]`, or
//! `#[serde(default, deserialize_with = "crate::integral::option")]` on an `Option`.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Visitor};

struct Integral<T>(PhantomData<T>);

impl<T> Integral<T>
where
    T: TryFrom<i128>,
{
    fn fit<E: de::Error>(v: i128) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("integer {v} is out of range")))
    }
}

impl<T> Visitor<'_> for Integral<T>
where
    T: TryFrom<i128>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Self::fit(i128::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Self::fit(i128::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        // Only below 2^53 is a float's integer value exact: a larger one may be an integer
        // literal out of the field's range that the parser rounded into it.
        if v.is_finite() && v.fract() == 0.0 && v.abs() <= 9_007_199_254_740_992.0 {
            #[allow(clippy::cast_possible_truncation)]
            return Self::fit(v as i128);
        }
        Err(E::invalid_type(de::Unexpected::Float(v), &self))
    }
}

/// An integer, written with or without a zero fraction.
pub fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128>,
{
    d.deserialize_any(Integral(PhantomData))
}

/// An optional integer (`null` is `None`), written with or without a zero fraction.
pub fn option<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128>,
{
    struct Maybe<T>(PhantomData<T>);

    impl<'de, T> Visitor<'de> for Maybe<T>
    where
        T: TryFrom<i128>,
    {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
            deserialize(d).map(Some)
        }
    }

    d.deserialize_option(Maybe(PhantomData))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Fields {
        #[serde(deserialize_with = "super::deserialize")]
        small: u32,
        #[serde(default, deserialize_with = "super::option")]
        signed: Option<i64>,
    }

    fn parse(json: &str) -> Result<Fields, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn integral_floats_are_integers() {
        let f = parse(r#"{"small": 145.0, "signed": -3.0}"#).expect("integral floats");
        assert_eq!(
            f,
            Fields {
                small: 145,
                signed: Some(-3)
            }
        );
        let f = parse(r#"{"small": 1e2, "signed": null}"#).expect("exponent, null");
        assert_eq!(
            f,
            Fields {
                small: 100,
                signed: None
            }
        );
        let f = parse(r#"{"small": 7}"#).expect("plain, absent");
        assert_eq!(
            f,
            Fields {
                small: 7,
                signed: None
            }
        );
        let f = parse(r#"{"small": 0, "signed": -9223372036854775808}"#).expect("i64::MIN");
        assert_eq!(f.signed, Some(i64::MIN));
    }

    #[test]
    fn fractions_strings_and_out_of_range_are_refused() {
        for bad in [
            r#"{"small": 1.5}"#,
            r#"{"small": -1}"#,
            r#"{"small": -1.0}"#,
            r#"{"small": 4294967296}"#,
            r#"{"small": 1e300}"#,
            r#"{"small": "1"}"#,
            r#"{"small": true}"#,
            r#"{"small": 1, "signed": 9223372036854775808}"#,
            r#"{"small": 1, "signed": 9.3e18}"#,
            r#"{"small": 1, "signed": -9223372036854775809}"#,
            r#"{"small": 1, "signed": -9.2e18}"#,
            r#"{"small": 1, "signed": 0.5}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
