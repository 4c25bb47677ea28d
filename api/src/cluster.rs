//! Cluster names and localities.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a cluster name or locality is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is {len} characters long; the limit is {max}")]
    TooLong {
        what: &'static str,
        value: String,
        len: usize,
        max: usize,
    },
    #[error(
        "{what} {value:?} contains {bad:?}; use lower-case letters, digits and '-', starting with a letter and ending with a letter or digit"
    )]
    BadChar {
        what: &'static str,
        value: String,
        bad: char,
    },
    #[error("{what} {value:?} must start with a letter and end with a letter or digit")]
    BadEdge { what: &'static str, value: String },
    #[error("locality {0:?} has more than three parts (region/zone/subzone)")]
    TooManyParts(String),
}

/// Validates an RFC 1123 DNS label (the shape of cluster names, zones, regions).
fn validate_label(what: &'static str, value: &str, max: usize) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    if value.len() > max {
        return Err(NameError::TooLong {
            what,
            value: value.chars().take(80).collect(),
            len: value.len(),
            max,
        });
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadChar {
            what,
            value: value.to_owned(),
            bad,
        });
    }
    let first = value.as_bytes()[0];
    let last = value.as_bytes()[value.len() - 1];
    if !first.is_ascii_lowercase() || last == b'-' {
        return Err(NameError::BadEdge {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// A cluster's name: a DNS label of at most 63 characters, e.g. `east`.
/// Shared when cloned (every endpoint of a cluster carries its name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterName(Arc<str>);

impl ClusterName {
    pub const MAX_LEN: usize = 63;

    pub fn new(name: &str) -> Result<Self, NameError> {
        validate_label("cluster name", name, Self::MAX_LEN)?;
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ClusterName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for ClusterName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<ClusterName> for String {
    fn from(c: ClusterName) -> Self {
        c.0.as_ref().to_owned()
    }
}

/// Where an endpoint runs: `region/zone/subzone`, each part optional from the
/// right (`us-east`, `us-east/us-east-1a`). Written and parsed as that string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    pub fn new(region: &str, zone: &str) -> Result<Self, NameError> {
        format!("{region}/{zone}").parse()
    }

    /// How close `other` is to `self`: 3 = same subzone, 2 = same zone,
    /// 1 = same region, 0 = different region. Empty parts never match.
    pub fn proximity(&self, other: &Self) -> u8 {
        let same = |a: &str, b: &str| !a.is_empty() && a == b;
        if !same(&self.region, &other.region) {
            0
        } else if !same(&self.zone, &other.zone) {
            1
        } else if !same(&self.subzone, &other.subzone) {
            2
        } else {
            3
        }
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.region)?;
        for part in [&self.zone, &self.subzone] {
            if part.is_empty() {
                break;
            }
            write!(f, "/{part}")?;
        }
        Ok(())
    }
}

impl FromStr for Locality {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Ok(Self::default());
        }
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() > 3 {
            return Err(NameError::TooManyParts(s.to_owned()));
        }
        let whats = ["region", "zone", "subzone"];
        for (part, what) in parts.iter().zip(whats) {
            validate_label(what, part, 63)?;
        }
        let get = |i: usize| parts.get(i).map(|p| (*p).to_owned()).unwrap_or_default();
        Ok(Self {
            region: get(0),
            zone: get(1),
            subzone: get(2),
        })
    }
}

impl TryFrom<String> for Locality {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Locality> for String {
    fn from(l: Locality) -> Self {
        l.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_are_dns_labels() {
        assert!(ClusterName::new("east").is_ok());
        assert!(ClusterName::new("us-east-1").is_ok());
        assert_eq!(
            ClusterName::new(""),
            Err(NameError::Empty {
                what: "cluster name"
            })
        );
        assert!(matches!(
            ClusterName::new("East"),
            Err(NameError::BadChar { bad: 'E', .. })
        ));
        assert!(matches!(
            ClusterName::new("a_b"),
            Err(NameError::BadChar { bad: '_', .. })
        ));
        assert!(matches!(
            ClusterName::new("1east"),
            Err(NameError::BadEdge { .. })
        ));
        assert!(matches!(
            ClusterName::new("east-"),
            Err(NameError::BadEdge { .. })
        ));
        assert!(matches!(
            ClusterName::new(&"a".repeat(64)),
            Err(NameError::TooLong { len: 64, .. })
        ));
        let msg = ClusterName::new("a.b").unwrap_err().to_string();
        assert!(msg.contains("cluster name \"a.b\" contains '.'"), "{msg}");
    }

    #[test]
    fn locality_parses_and_prints() {
        let l: Locality = "us-east/us-east-1a".parse().unwrap();
        assert_eq!(l.region, "us-east");
        assert_eq!(l.zone, "us-east-1a");
        assert_eq!(l.subzone, "");
        assert_eq!(l.to_string(), "us-east/us-east-1a");
        let full: Locality = "r/z/s".parse().unwrap();
        assert_eq!(full.to_string(), "r/z/s");
        assert_eq!(Locality::default().to_string(), "");
        assert!(matches!(
            "a/b/c/d".parse::<Locality>(),
            Err(NameError::TooManyParts(_))
        ));
        assert!(matches!(
            "a//c".parse::<Locality>(),
            Err(NameError::Empty { what: "zone" })
        ));
    }

    #[test]
    fn proximity_ranks_subzone_zone_region() {
        let me: Locality = "us-east/a/s1".parse().unwrap();
        let p = |s: &str| me.proximity(&s.parse().unwrap());
        assert_eq!(p("us-east/a/s1"), 3);
        assert_eq!(p("us-east/a/s2"), 2);
        assert_eq!(p("us-east/b"), 1);
        assert_eq!(p("us-west/a/s1"), 0);
        assert_eq!(Locality::default().proximity(&Locality::default()), 0);
    }
}
