//! Recipe templates: the `{# grid: ... #}` header, rendering with minijinja
//! (strict undefined variables, includes and extends relative to the template's
//! directory and never outside it), and error messages that name the template
//! file and line (for a block never closed, the line that opens it).

use std::path::{Path, PathBuf};

use anyhow::Result;
use minijinja::{Environment, UndefinedBehavior};
use serde::Deserialize;
use serde_yaml::Value;

use super::grid::{self, Axis, Origin};
use crate::error::user_msg;

/// A template file, its text and its header.
#[derive(Debug)]
pub struct Template {
    pub path: PathBuf,
    pub text: String,
    pub header: Header,
}

/// What the header says: the grid (in the order written) and an optional sweep name.
#[derive(Debug, Default)]
pub struct Header {
    pub grid: Vec<Axis>,
    pub name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    #[serde(default)]
    grid: serde_yaml::Mapping,
    #[serde(default)]
    name: Option<String>,
}

impl Template {
    /// Reads a template file and its header.
    pub fn load(path: &Path) -> Result<Template> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| user_msg(format!("{}: cannot read template: {e}", path.display())))?;
        let header = parse_header(&text).map_err(|e| user_msg(format!("{}:{e}", path.display())))?;
        Ok(Template { path: path.to_path_buf(), text, header })
    }

    /// The file name the template is known by in minijinja (and in its errors).
    fn name(&self) -> String {
        self.path.file_name().map_or_else(|| "template".into(), |n| n.to_string_lossy().into_owned())
    }

    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Renders the template with `vars` as its variables. An error names the
    /// template file (or the included one) and line, and shows that line.
    pub fn render(&self, vars: &Value) -> Result<String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.set_loader(folder_loader(self.dir()));
        let name = self.name();
        // The template itself comes from the text already read; its neighbours from the loader.
        env.add_template_owned(name.clone(), self.text.clone())
            .map_err(|e| self.template_error(&e))?;
        let tmpl = env.get_template(&name).map_err(|e| self.template_error(&e))?;
        tmpl.render(minijinja::Value::from_serialize(vars)).map_err(|e| self.template_error(&e))
    }

    /// One message for a minijinja error: `file:line: what`, then the line itself.
    fn template_error(&self, e: &minijinja::Error) -> anyhow::Error {
        // The innermost error with a location is the one that says where (an include's, say).
        let mut located: &minijinja::Error = e;
        let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(s) = cur {
            if let Some(m) = s.downcast_ref::<minijinja::Error>() {
                if m.line().is_some() {
                    located = m;
                }
            }
            cur = s.source();
        }
        let file = match located.name() {
            Some(n) if n != self.name() => self.dir().join(n),
            _ => self.path.clone(),
        };
        let what = match located.detail() {
            Some(d) => format!("{}: {d}", located.kind()),
            None => located.kind().to_string(),
        };
        let src = std::fs::read_to_string(&file).unwrap_or_default();
        // minijinja finds an unclosed block at the end of the file; say where it opens.
        if located.kind() == minijinja::ErrorKind::SyntaxError && located.detail().is_some_and(|d| d.contains("end of input")) {
            if let Some((line, tag)) = unclosed_block(&src) {
                return user_msg(format!(
                    "{}:{line}: syntax error: `{{% {tag} %}}` opened here is never closed (no `{{% end{tag} %}}`){}",
                    file.display(),
                    show_line(&src, line)
                ));
            }
        }
        match located.line() {
            Some(line) => {
                user_msg(format!("{}:{line}: {what}{}", file.display(), show_line(&src, line)))
            }
            None => user_msg(format!("{}: {what}", file.display())),
        }
    }
}

/// A minijinja loader for templates under `dir` only: a name with `..`, a
/// leading `/`, a backslash, or one that leads (through a link) outside `dir` is an
/// error, not a file read.
fn folder_loader(dir: PathBuf) -> impl Fn(&str) -> Result<Option<String>, minijinja::Error> + Send + Sync + 'static {
    move |name: &str| {
        let outside = || {
            minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("`{name}` is outside the template's folder {}; templates include only files under it", dir.display()),
            )
        };
        if name.starts_with('/') || name.contains('\\') || name.split('/').any(|s| s == "..") {
            return Err(outside());
        }
        let path = dir.join(name);
        let (Ok(real), Ok(base)) = (path.canonicalize(), dir.canonicalize()) else {
            return Ok(None); // not there: minijinja says "template not found"
        };
        if !real.starts_with(&base) {
            return Err(outside());
        }
        std::fs::read_to_string(&real).map(Some).map_err(|e| {
            minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, format!("cannot read {}: {e}", real.display()))
        })
    }
}

/// The innermost block tag (`if`, `for`, `macro`, ...) of `text` that is never
/// closed, with its 1-based line. Comments and `raw` blocks are skipped.
pub fn unclosed_block(text: &str) -> Option<(usize, String)> {
    const BLOCKS: &[&str] = &["if", "for", "block", "macro", "call", "filter", "with", "autoescape", "set"];
    let mut open: Vec<(usize, String)> = Vec::new();
    let mut rest = text;
    let mut consumed = 0;
    while let Some(i) = rest.find("{%").into_iter().chain(rest.find("{#")).min() {
        let at = consumed + i;
        let (close, is_comment) = if rest[i..].starts_with("{#") { ("#}", true) } else { ("%}", false) };
        let Some(end) = rest[i + 2..].find(close) else { break };
        let inner = &rest[i + 2..i + 2 + end];
        let next = i + 2 + end + 2;
        if !is_comment {
            let inner = inner.trim_matches(['-', '+', '~']).trim();
            let word = inner.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').next().unwrap_or("");
            let line = 1 + text[..at].matches('\n').count();
            if word == "raw" {
                // Skip to {% endraw %}.
                match text[consumed + next..].find("endraw") {
                    Some(j) => {
                        let after = consumed + next + j;
                        match text[after..].find("%}") {
                            Some(k) => {
                                consumed = after + k + 2;
                                rest = &text[consumed..];
                                continue;
                            }
                            None => break,
                        }
                    }
                    None => return Some((line, "raw".into())),
                }
            }
            // `{% set x = 1 %}` is a statement; only `{% set x %}...{% endset %}` is a block.
            if BLOCKS.contains(&word) && !(word == "set" && inner.contains('=')) {
                open.push((line, word.to_string()));
            } else if word.starts_with("end") && BLOCKS.contains(&&word[3..]) {
                open.pop();
            }
        }
        consumed += next;
        rest = &text[consumed..];
    }
    open.pop()
}

/// `\n  N | text` for line `line` (1-based) of `text`, or nothing past the end.
pub fn show_line(text: &str, line: usize) -> String {
    match text.lines().nth(line.saturating_sub(1)) {
        Some(l) => format!("\n  {line} | {l}"),
        None => String::new(),
    }
}

/// Finds the header: a `{# ... #}` comment holding a YAML `grid:` (and optional
/// `name:`), before anything but blank lines and `#` comment lines. Errors start
/// with the line number (the caller prefixes the file).
pub fn parse_header(text: &str) -> Result<Header, String> {
    let mut offset = 0;
    let mut line_no = 1;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.is_empty() || (t.starts_with('#') && !t.starts_with("#}")) {
            offset += line.len();
            line_no += 1;
            continue;
        }
        break;
    }
    let rest = &text[offset..];
    let t = rest.trim_start();
    if !t.starts_with("{#") {
        return Ok(Header::default());
    }
    let start = offset + (rest.len() - t.len());
    line_no += text[offset..start].matches('\n').count();
    let Some(end) = text[start..].find("#}") else {
        return Err(format!("{line_no}: the comment that opens here is never closed with #}}"));
    };
    let mut body = &text[start + 2..start + end];
    body = body.strip_prefix('-').unwrap_or(body);
    body = body.strip_suffix('-').unwrap_or(body);
    if !body.lines().any(|l| l.trim_start().starts_with("grid:") || l.trim_start().starts_with("name:")) {
        return Ok(Header::default()); // an ordinary comment
    }
    // Line of the body's first line in the file: the `{#` line.
    let raw: RawHeader = serde_yaml::from_str(body).map_err(|e| {
        let at = e.location().map_or(line_no, |l| line_no + l.line() - 1);
        format!("{at}: the sweep header is not valid: {e}{}", show_line(text, at))
    })?;
    let line_of = |key: &str| -> usize {
        body.lines()
            .position(|l| {
                let l = l.trim_start().trim_start_matches(['\'', '"']);
                l.starts_with(key) && l[key.len()..].trim_start_matches(['\'', '"']).starts_with(':')
            })
            .map_or(line_no, |i| line_no + i)
    };
    let mut axes = Vec::new();
    for (k, v) in raw.grid {
        let Value::String(key) = k else {
            return Err(format!("{line_no}: grid keys must be recipe key paths like training.lr, got {k:?}"));
        };
        let line = line_of(&key);
        grid::check_key(&key).map_err(|e| format!("{line}: grid key {e:#}"))?;
        let values = match v {
            Value::Sequence(vs) => vs,
            other => vec![other],
        };
        axes.push(Axis { key, values, origin: Origin::Header { line } });
    }
    Ok(Header { grid: axes, name: raw.name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_header_after_yaml_comments() {
        let text = "# runner sweep x.yaml.j2\n\n{#\ngrid:\n  masking.rate: [0.15, 0.3]\n  training.lr: 1e-4\nname: mr\n#}\nrun: {name: a}\n";
        let h = parse_header(text).unwrap();
        assert_eq!(h.name.as_deref(), Some("mr"));
        assert_eq!(h.grid.len(), 2);
        assert_eq!(h.grid[0].key, "masking.rate");
        assert_eq!(h.grid[0].origin, Origin::Header { line: 5 });
        assert_eq!(h.grid[1].values.len(), 1);
    }

    #[test]
    fn ordinary_comments_and_no_header() {
        assert!(parse_header("{# just a note #}\nrun: {}").unwrap().grid.is_empty());
        assert!(parse_header("run: {}\n{# grid: {a.b: [1]} #}").unwrap().grid.is_empty());
    }

    #[test]
    fn an_unclosed_block_is_found_where_it_opens() {
        let text = "run:\n{% if a %}\n  x: 1\n{% for i in b %}{{ i }}{% endfor %}\n{# {% if c %} #}\n{% set y = 2 %}\nz: 3\n";
        assert_eq!(unclosed_block(text), Some((2, "if".to_string())));
        assert_eq!(unclosed_block("{% if a %}{% endif %}{% raw %}{% if %}{% endraw %}"), None);
        assert_eq!(unclosed_block("{% for x in y %}\n{%- if x -%}\n{% endif %}"), Some((1, "for".to_string())));
    }

    #[test]
    fn includes_stay_in_the_template_folder() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("t");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(dir.path().join("secret.yaml"), "s: 1\n").unwrap();
        std::fs::write(inner.join("part.yaml"), "p: 1\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.yaml"), inner.join("link.yaml")).unwrap();
        let load = folder_loader(inner.clone());
        assert_eq!(load("part.yaml").unwrap().as_deref(), Some("p: 1\n"));
        assert_eq!(load("nope.yaml").unwrap(), None);
        for name in ["../secret.yaml", "/etc/passwd", "a/../../secret.yaml", "link.yaml"] {
            let err = load(name).unwrap_err().to_string();
            assert!(err.contains("outside the template's folder"), "{name}: {err}");
        }
    }

    #[test]
    fn bad_headers_name_the_line() {
        let err = parse_header("# c\n{#\ngrid:\n  a.b: [1\n#}\n").unwrap_err();
        assert!(err.contains("not valid"), "{err}");
        let err = parse_header("{#\ngrid:\n  run.name: [a]\n#}\n").unwrap_err();
        assert!(err.starts_with("3: grid key"), "{err}");
        let err = parse_header("{#\ngrid: {}\nextra: 1\n#}\n").unwrap_err();
        assert!(err.contains("extra"), "{err}");
    }
}
