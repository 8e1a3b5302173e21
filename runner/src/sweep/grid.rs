//! The sweep grid: `--grid key.path=v1,v2` arguments, the grid from a template
//! header, their cartesian product (one [`Point`] per run) and the run name each
//! point gets from its swept values.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use serde_yaml::Value;

use crate::recipe::Override;
use crate::report::table::show;

/// Where a grid key was given, for messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// The template header, at this line of the template file.
    Header { line: usize },
    /// A `--grid` argument.
    CommandLine,
}

/// One swept key and its values, in the order they are tried.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// A recipe key path such as `masking.rate`.
    pub key: String,
    pub values: Vec<Value>,
    pub origin: Origin,
}

impl Axis {
    pub fn path(&self) -> Vec<String> {
        self.key.split('.').map(str::to_string).collect()
    }
}

/// One `--grid key.path=v1,v2,...` argument. Each value is read as YAML.
#[derive(Debug, Clone, PartialEq)]
pub struct GridArg(pub Axis);

impl std::str::FromStr for GridArg {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let Some((key, values)) = s.split_once('=') else {
            bail!("--grid {s}: expected key.path=v1,v2,...");
        };
        let key = key.trim();
        check_key(key).with_context(|| format!("--grid {s}"))?;
        let values = values
            .split(',')
            .map(|v| {
                let v = v.trim();
                if v.is_empty() {
                    bail!("--grid {s}: empty value");
                }
                serde_yaml::from_str(v).with_context(|| format!("--grid {s}: `{v}` is not a YAML value"))
            })
            .collect::<Result<Vec<Value>>>()?;
        Ok(GridArg(Axis { key: key.to_string(), values, origin: Origin::CommandLine }))
    }
}

/// A grid key is a dotted recipe key path; the sweep itself sets `run.name` and
/// `run.output_dir`.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.split('.').any(|p| p.trim().is_empty() || p != p.trim()) {
        bail!("`{key}` is not a recipe key path like training.lr");
    }
    if key == "run.name" || key == "run.output_dir" || key == "run" {
        bail!("`{key}` cannot be swept: the sweep names its runs and puts them under <output_dir>/<sweep>/");
    }
    Ok(())
}

/// Header axes, with `--grid` axes replacing header axes of the same key and
/// new keys added after them.
pub fn merge(header: Vec<Axis>, command_line: Vec<Axis>) -> Vec<Axis> {
    let mut axes = header;
    for a in command_line {
        match axes.iter_mut().find(|h| h.key == a.key) {
            Some(h) => *h = a,
            None => axes.push(a),
        }
    }
    axes
}

/// One grid point: a value for every axis, and the run name derived from them.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub name: String,
    /// `(key, value)` in axis order.
    pub values: Vec<(String, Value)>,
}

impl Point {
    /// The point as `--set`-style overrides.
    pub fn overrides(&self) -> Vec<Override> {
        self.values
            .iter()
            .map(|(k, v)| Override { path: k.split('.').map(str::to_string).collect(), value: v.clone() })
            .collect()
    }

    /// The point as a nested mapping: `masking.rate = 0.3` becomes `{masking: {rate: 0.3}}`.
    pub fn tree(&self) -> Result<Value> {
        let mut tree = Value::Mapping(Default::default());
        for o in self.overrides() {
            crate::recipe::overrides::apply(&mut tree, &o)
                .map_err(|e| anyhow::anyhow!("grid keys clash: {e:#}"))?;
        }
        Ok(tree)
    }
}

/// The cartesian product of the axes (the last axis varies fastest). No axis
/// gives a single point named `run`. Names that clash are an error.
pub fn expand(axes: &[Axis]) -> Result<Vec<Point>> {
    for a in axes {
        if a.values.is_empty() {
            bail!("grid key {}: no values", a.key);
        }
    }
    let labels = labels(axes);
    let mut points = vec![Vec::<(String, Value)>::new()];
    for a in axes {
        points = points
            .into_iter()
            .flat_map(|p| {
                a.values.iter().map(move |v| {
                    let mut p = p.clone();
                    p.push((a.key.clone(), v.clone()));
                    p
                })
            })
            .collect();
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(points.len());
    for values in points {
        let name = if values.is_empty() {
            "run".to_string()
        } else {
            values
                .iter()
                .zip(&labels)
                .map(|((_, v), label)| sanitise(&format!("{label}-{}", show(v))))
                .collect::<Vec<_>>()
                .join("_")
        };
        if !seen.insert(name.clone()) {
            bail!("two grid points get the same run name `{name}`: give distinct values");
        }
        out.push(Point { name, values });
    }
    Ok(out)
}

/// The label of each axis in run names: the last part of its key, or the whole
/// key (dots kept) where two axes end the same.
fn labels(axes: &[Axis]) -> Vec<String> {
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    axes.iter()
        .map(|a| {
            let l = last(&a.key);
            if axes.iter().filter(|b| last(&b.key) == l).count() > 1 {
                a.key.clone()
            } else {
                l
            }
        })
        .collect()
}


/// Keeps `[A-Za-z0-9-_.]`, replaces anything else by `_`.
pub fn sanitise(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(s: &str) -> Axis {
        s.parse::<GridArg>().unwrap().0
    }

    #[test]
    fn expands_the_product_with_readable_names() {
        let points = expand(&[axis("masking.rate=0.15,0.3"), axis("training.lr=1e-4,5e-4,1")]).unwrap();
        assert_eq!(points.len(), 6);
        assert_eq!(points[0].name, "rate-0.15_lr-0.0001");
        assert_eq!(points[5].name, "rate-0.3_lr-1");
        assert_eq!(points[1].values[1].1.as_f64(), Some(5e-4));
        let tree = points[0].tree().unwrap();
        assert_eq!(tree["masking"]["rate"].as_f64(), Some(0.15));
        assert_eq!(expand(&[]).unwrap()[0].name, "run");
    }

    #[test]
    fn same_last_parts_use_whole_keys_and_names_are_sanitised() {
        let points = expand(&[axis("masking.rate=0.1"), axis("eval.rate=a/b")]).unwrap();
        assert_eq!(points[0].name, "masking.rate-0.1_eval.rate-a_b");
    }

    #[test]
    fn refuses_bad_keys_and_clashing_names() {
        assert!("masking.rate".parse::<GridArg>().is_err());
        assert!("run.name=a,b".parse::<GridArg>().is_err());
        assert!("a..b=1".parse::<GridArg>().is_err());
        assert!("a.b=1,,2".parse::<GridArg>().is_err());
        let err = expand(&[axis("data.suffix=a/b,a_b")]).unwrap_err().to_string();
        assert!(err.contains("same run name"), "{err}");
    }

    #[test]
    fn command_line_replaces_header_axes() {
        let h = vec![Axis { key: "a.b".into(), values: vec![1.into()], origin: Origin::Header { line: 2 } }];
        let merged = merge(h, vec![axis("a.b=3,4"), axis("c.d=5")]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].values.len(), 2);
        assert_eq!(merged[0].origin, Origin::CommandLine);
    }
}
