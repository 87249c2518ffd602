//! The YAML emitter: just enough YAML for a `#cloud-config` document with `bootcmd`,
//! `write_files` and `runcmd`. File contents are literal block scalars (`content: |`) so the user-data stays
//! readable; anything a block scalar cannot carry falls back to a double-quoted scalar with
//! escapes. Output is deterministic: same input, same bytes.

/// One `write_files` entry.
pub(crate) struct WriteFile<'a> {
    pub path: &'a str,
    pub owner: &'a str,
    pub permissions: &'a str,
    pub content: &'a str,
}

/// A whole `#cloud-config` document. `comment` lines go right after the `#cloud-config` line
/// (each prefixed with `# `); `bootcmd` and `runcmd` entries are argv lists (exec form, no
/// shell). `bootcmd` runs early in cloud-init's init stage, on every boot, before `write_files`
/// and before the Engine's boot-time start.
pub(crate) fn document(
    comment: &[&str],
    bootcmd: &[&[&str]],
    write_files: &[WriteFile<'_>],
    runcmd: &[&[&str]],
) -> String {
    let mut out = String::from("#cloud-config\n");
    for line in comment {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    commands(&mut out, "bootcmd", bootcmd);
    if !write_files.is_empty() {
        out.push_str("write_files:\n");
        for file in write_files {
            out.push_str("  - path: ");
            out.push_str(&scalar(file.path));
            out.push_str("\n    owner: ");
            out.push_str(&scalar(file.owner));
            out.push_str("\n    permissions: ");
            out.push_str(&scalar(file.permissions));
            out.push_str("\n    content: ");
            out.push_str(&block(file.content, 6));
        }
    }
    commands(&mut out, "runcmd", runcmd);
    out
}

/// A `bootcmd`/`runcmd` list of argv lists, nothing when empty.
fn commands(out: &mut String, key: &str, list: &[&[&str]]) {
    if list.is_empty() {
        return;
    }
    out.push_str(key);
    out.push_str(":\n");
    for argv in list {
        let items: Vec<String> = argv.iter().map(|arg| scalar(arg)).collect();
        out.push_str("  - [ ");
        out.push_str(&items.join(", "));
        out.push_str(" ]\n");
    }
}

/// A scalar on one line: plain for absolute paths of safe characters, single-quoted for other
/// printable ASCII (so `0644` stays a string and `root:root` needs no thought), double-quoted
/// with escapes for anything else.
pub(crate) fn scalar(s: &str) -> String {
    if s.starts_with('/') && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-')) {
        s.to_owned()
    } else if s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        format!("'{}'", s.replace('\'', "''"))
    } else {
        double_quoted(s)
    }
}

/// A literal block scalar whose lines are indented by `indent` spaces, followed by a newline;
/// or a one-line quoted scalar when a block cannot represent `content` exactly.
///
/// Chomping follows the trailing newlines: none `|-`, one `|`, more `|+`. An indentation
/// indicator is added when the first line starts with a space (auto-detection would take that
/// space as indentation). The indicator counts from the key's indentation, `indent - 2`.
pub(crate) fn block(content: &str, indent: usize) -> String {
    let body = content.trim_end_matches('\n');
    let trailing = content.len() - body.len();
    let printable = content.bytes().all(|b| b == b'\n' || (0x20..=0x7e).contains(&b));
    if body.is_empty() || !printable {
        let mut out = double_quoted(content);
        out.push('\n');
        return out;
    }
    let mut out = String::from("|");
    if body.starts_with(' ') {
        out.push('2');
    }
    out.push_str(match trailing {
        0 => "-",
        1 => "",
        _ => "+",
    });
    out.push('\n');
    let pad = " ".repeat(indent);
    for line in body.split('\n') {
        if !line.is_empty() {
            out.push_str(&pad);
            out.push_str(line);
        }
        out.push('\n');
    }
    for _ in 1..trailing {
        out.push('\n');
    }
    out
}

/// A double-quoted scalar; everything outside printable ASCII is escaped, so the result means
/// the same to YAML 1.1 (PyYAML, hence cloud-init) and YAML 1.2 parsers.
fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xffff => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08X}", u32::from(c))),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars() {
        assert_eq!(scalar("/etc/flotilla/ca.pem"), "/etc/flotilla/ca.pem");
        assert_eq!(scalar("0644"), "'0644'");
        assert_eq!(scalar("root:root"), "'root:root'");
        assert_eq!(scalar("it's"), "'it''s'");
        assert_eq!(scalar("/a b"), "'/a b'");
        assert_eq!(scalar("a\"\\\n\té\u{1F600}"), r#""a\"\\\n\t\u00E9\U0001F600""#);
    }

    #[test]
    fn blocks_choose_chomping_and_indentation() {
        assert_eq!(block("a\nb\n", 6), "|\n      a\n      b\n");
        assert_eq!(block("a\n\nb", 6), "|-\n      a\n\n      b\n");
        assert_eq!(block("a\n\n\n", 6), "|+\n      a\n\n\n");
        assert_eq!(block("  a\nb\n", 6), "|2\n        a\n      b\n");
        assert_eq!(block("\n\n", 6), "\"\\n\\n\"\n");
        assert_eq!(block("", 6), "\"\"\n");
        assert_eq!(block("a\tb\n", 6), "\"a\\tb\\n\"\n");
    }

    /// Round-trips awkward contents through PyYAML (what cloud-init parses with), when present.
    #[test]
    fn contents_round_trip_through_pyyaml() {
        let contents = [
            "plain\n",
            "no newline",
            "two\n\n",
            "three\n\n\n",
            "  leading spaces\nx\n",
            "  \n  x\n",
            "\n\nleading blank lines\n",
            "# not a comment\n---\n...\n",
            "key: value\n- item\n",
            "tab\there\n",
            "quote ' and \" and \\\n",
            "trailing spaces   \n",
            "crlf\r\n",
            "é ünïcode\n",
            "\u{85}nel\u{2028}ls\n",
            "",
            "\n",
            "{{ jinja }} ${x} $(y) `z`\n",
        ];
        let files: Vec<WriteFile<'_>> = contents
            .iter()
            .map(|c| WriteFile { path: "/x", owner: "root:root", permissions: "0644", content: c })
            .collect();
        let doc = document(&["comment"], &[], &files, &[&["/bin/true", "a b", "it's"]]);
        let Some(json) = pyyaml_to_json(&doc) else {
            return;
        };
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("json");
        let got: Vec<&str> = parsed["write_files"]
            .as_array()
            .expect("write_files")
            .iter()
            .map(|f| f["content"].as_str().expect("content"))
            .collect();
        assert_eq!(got, contents);
        assert_eq!(parsed["write_files"][0]["permissions"], "0644");
        assert_eq!(parsed["runcmd"][0], serde_json::json!(["/bin/true", "a b", "it's"]));
    }

    /// `None` (and a note on stderr) when python3 with PyYAML is not available.
    fn pyyaml_to_json(doc: &str) -> Option<String> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let script = "import json,sys,yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))";
        let child = Command::new("python3")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("python3 not found: skipping the PyYAML round trip");
            return None;
        };
        child.stdin.take().expect("stdin").write_all(doc.as_bytes()).expect("write");
        let out = child.wait_with_output().expect("python3");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No module named 'yaml'") {
            eprintln!("PyYAML not installed: skipping the PyYAML round trip");
            return None;
        }
        assert!(out.status.success(), "PyYAML refused the document: {stderr}\n{doc}");
        Some(String::from_utf8(out.stdout).expect("utf-8"))
    }
}
