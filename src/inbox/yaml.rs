//! YAML text -> a [`serde_yaml::Value`] whose expanded size is bounded while it is built.
//!
//! An alias replays its anchor's whole value, so a few KB of YAML can stand for gigabytes (a "billion
//! laughs"); serde_yaml's own guard bounds only the number of replays, not their size. This reader builds
//! the same value serde_yaml's `Value` would (duplicate keys refused, tags kept), but charges every node
//! it builds, aliases expanded, to a budget, and stops at the first node over it. The charge of a node is
//! the size of its compact JSON form, not counting escapes: a value within the budget never took more
//! than a few times the budget in memory, and a value over it is over as JSON too.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde_yaml::value::{Tag, TaggedValue};
use serde_yaml::{Mapping, Value};

/// The most bytes a YAML file's JSON form may take once its aliases are expanded: what stops an
/// alias bomb while it is parsed, long before it takes memory or time.
pub(crate) const MAX_EXPANDED: usize = 1024 * 1024;
// The messages give it in whole MiB.
const _: () = assert!(MAX_EXPANDED.is_multiple_of(1024 * 1024));

/// Why [`from_str`] gave no value.
#[derive(Debug)]
pub(crate) enum YamlError {
    /// The value, aliases expanded, is larger than the budget (in bytes of JSON).
    TooLarge { limit: usize },
    /// Not YAML, or a duplicate key: serde_yaml's own message.
    Invalid(serde_yaml::Error),
}

/// Parses `text` into a value whose JSON form, aliases expanded, takes at most `limit` bytes.
pub(crate) fn from_str(text: &str, limit: usize) -> Result<Value, YamlError> {
    let budget = Budget {
        left: Cell::new(limit),
        exceeded: Cell::new(false),
    };
    let deserializer = serde_yaml::Deserializer::from_str(text);
    match Bounded(&budget).deserialize(deserializer) {
        Ok(value) => Ok(value),
        Err(_) if budget.exceeded.get() => Err(YamlError::TooLarge { limit }),
        Err(e) => Err(YamlError::Invalid(e)),
    }
}

struct Budget {
    /// Bytes the value may still take.
    left: Cell<usize>,
    /// Set when a charge did not fit: the error that follows is this one, whatever serde_yaml says.
    exceeded: Cell<bool>,
}

impl Budget {
    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        match self.left.get().checked_sub(bytes) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.exceeded.set(true);
                Err(E::custom(
                    "the value is over its size limit once aliases are expanded",
                ))
            }
        }
    }
}

/// A seed and visitor that builds one value, charging it to the budget.
#[derive(Clone, Copy)]
struct Bounded<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        self.0.charge(if b { 4 } else { 5 })?;
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        self.0.charge(1)?;
        Ok(Value::Number(i.into()))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        self.0.charge(1)?;
        Ok(Value::Number(u.into()))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        self.0.charge(1)?;
        Ok(Value::Number(f.into()))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        self.0.charge(s.len() + 2)?;
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        self.0.charge(s.len() + 2)?;
        Ok(Value::String(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.charge(4)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    /// `[` and one `,` or `]` per item.
    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Value, A::Error> {
        self.0.charge(1)?;
        let mut sequence = Vec::new();
        while let Some(item) = items.next_element_seed(self)? {
            self.0.charge(1)?;
            sequence.push(item);
        }
        Ok(Value::Sequence(sequence))
    }

    /// `{`, and a `:` and one `,` or `}` per entry.
    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Value, A::Error> {
        self.0.charge(1)?;
        let mut mapping = Mapping::new();
        while let Some(key) = entries.next_key_seed(self)? {
            if mapping.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate entry {}",
                    describe_key(&key)
                )));
            }
            self.0.charge(2)?;
            let value = entries.next_value_seed(self)?;
            mapping.insert(key, value);
        }
        Ok(Value::Mapping(mapping))
    }

    /// A tagged value (`!tag value`), as serde_yaml's `Value` reads it.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (tag, contents) = data.variant_seed(TagSeed)?;
        let value = contents.newtype_variant_seed(self)?;
        Ok(Value::Tagged(Box::new(TaggedValue { tag, value })))
    }
}

/// serde_yaml's words for a duplicate key, so messages read the same as before this reader.
fn describe_key(key: &Value) -> String {
    match key {
        Value::Null => "with null key".into(),
        Value::Bool(b) => format!("with key `{b}`"),
        Value::Number(n) => format!("with key {n}"),
        Value::String(s) => format!("with key {s:?}"),
        Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => "in YAML map".into(),
    }
}

/// The tag of a tagged value.
struct TagSeed;

impl<'de> DeserializeSeed<'de> for TagSeed {
    type Value = Tag;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Tag, D::Error> {
        deserializer.deserialize_string(self)
    }
}

impl Visitor<'_> for TagSeed {
    type Value = Tag;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a YAML tag string")
    }

    fn visit_str<E: de::Error>(self, tag: &str) -> Result<Tag, E> {
        if tag.is_empty() {
            return Err(E::custom("empty YAML tag is not allowed"));
        }
        Ok(Tag::new(tag))
    }
}

/// Bytes -> a YAML mapping, refusing duplicate keys (parsing straight into JSON would keep the last).
pub(crate) fn parse_yaml_mapping(bytes: &[u8]) -> Result<Mapping, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err("is empty; expected a YAML mapping with at least `kind`".into());
    }
    let value = from_str(text, MAX_EXPANDED).map_err(|e| match e {
        YamlError::TooLarge { limit } => too_large(limit),
        YamlError::Invalid(e) => {
            let e = e.to_string();
            if e.contains("duplicate entry") {
                format!("has a duplicate key: {e}")
            } else {
                format!("is not valid YAML: {e}")
            }
        }
    })?;
    match value {
        Value::Mapping(m) => Ok(m),
        other => Err(format!(
            "must be a YAML mapping (`key: value` lines), got {}",
            describe_yaml(&other)
        )),
    }
}

/// The words for a file whose JSON form, aliases expanded, is over `limit` ([`MAX_EXPANDED`]).
pub(crate) fn too_large(limit: usize) -> String {
    format!(
        "expands to more than {} MiB ({limit} bytes) of JSON once its YAML aliases are expanded, \
         the limit of a file's expanded size; use fewer aliases or smaller values",
        limit / (1024 * 1024)
    )
}

/// How a value reads in a message: `the number 3`, `a list`.
pub(crate) fn describe_yaml(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged `{}`", t.tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, limit: usize) -> Result<Value, YamlError> {
        from_str(text, limit)
    }

    #[test]
    fn a_value_within_the_budget_is_the_value_serde_yaml_reads() {
        let text = "a: &a [1, -2, 3.5, true, ~, \"s\"]\nb: *a\nc: {x: !t 1, y: !u [z]}\n'': null\n";
        let value = parse(text, 1 << 20).expect("parses");
        assert_eq!(value, serde_yaml::from_str::<Value>(text).unwrap());
    }

    #[test]
    fn the_budget_is_the_compact_json_size_of_an_escape_free_value() {
        let text = "a: [\"xy\", 1, true, null, {b: []}]\nc: {}\n";
        let value = parse(text, 1 << 20).expect("parses");
        let json = serde_json::to_string(&value).unwrap();
        // `[]` and `{}` are charged one byte each: a lower bound, never more than the JSON.
        let exact = json.len() - 2;
        assert!(parse(text, exact).is_ok(), "{json}");
        assert!(matches!(
            parse(text, exact - 1),
            Err(YamlError::TooLarge { limit }) if limit == exact - 1
        ));
    }

    #[test]
    fn an_alias_bomb_stops_at_the_budget() {
        // 900 MB expanded, with few enough aliases for serde_yaml's own bound on replays.
        let text = format!(
            "s: &s \"{}\"\nl: &l [{}]\nm: [{}]\n",
            "x".repeat(20_000),
            vec!["*s"; 300].join(","),
            vec!["*l"; 150].join(",")
        );
        assert!(matches!(
            parse(&text, 1 << 20),
            Err(YamlError::TooLarge { limit: 1_048_576 })
        ));
        // The same file without its last line is within serde_yaml's bound and 6 MB expanded.
        let smaller = text.lines().take(2).collect::<Vec<_>>().join("\n");
        assert!(parse(&smaller, 8 << 20).is_ok());
    }

    #[test]
    fn duplicate_keys_and_bad_yaml_are_invalid_not_too_large() {
        for text in ["a: 1\na: 2\n", "a: [\n"] {
            assert!(
                matches!(parse(text, 1 << 20), Err(YamlError::Invalid(_))),
                "{text}"
            );
        }
        let Err(YamlError::Invalid(e)) = parse("k: 1\nk: 2\n", 1 << 20) else {
            panic!("a duplicate key is invalid");
        };
        assert!(
            e.to_string().contains("duplicate entry with key \"k\""),
            "{e}"
        );
    }
}
