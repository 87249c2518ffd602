use super::*;
use crate::control_plane::metrics::live::{HostRow, Snapshot};

fn view(hosts: Vec<HostRow>, audit: Vec<AuditEvent>) -> View {
    View::new(Snapshot { cluster: "lab".into(), hosts, ..Default::default() }, audit)
}

#[test]
fn escape_covers_text_and_attributes() {
    assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
}

#[test]
fn the_page_lists_every_host_and_escapes_what_hosts_reported() {
    let evil = HostRow {
        name: "m1".into(),
        roles: vec!["manager".into()],
        connected: true,
        reachable: true,
        agent_version: "<script>alert(1)</script>".into(),
        ..Default::default()
    };
    let other = HostRow { name: "n1".into(), roles: vec!["node".into()], ..Default::default() };
    let audit = vec![AuditEvent {
        unix_ms: 1,
        kind: "enroll.ok".into(),
        host_name: "m1".into(),
        detail: "\"><img src=x onerror=alert(1)>".into(),
        ..Default::default()
    }];
    let html = render(&view(vec![evil, other], audit));
    assert!(html.contains(r#"<tr data-host="m1">"#) && html.contains(r#"<tr data-host="n1">"#), "{html}");
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    // Only the connected host is offered to the log tail.
    assert!(html.contains(r#"<option value="m1">m1</option>"#) && !html.contains(r#"<option value="n1">"#), "{html}");
    // Nothing is loaded from elsewhere.
    assert!(!html.contains("http://") && !html.contains("https://"), "{html}");
    assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("http"), "the script sets text only, loads nothing");
}

#[test]
fn the_page_names_the_leaders() {
    let mut m1 = HostRow {
        name: "m1".into(),
        roles: vec!["manager".into()],
        connected: true,
        reachable: true,
        ..Default::default()
    };
    m1.swarm = Some((true, "leader".into(), "10.1.0.2:2377".into()));
    m1.consul = Some(("10.1.0.2:8300".into(), 3));
    let html = render(&view(vec![m1], vec![]));
    assert!(html.contains(r#"<dd id="swarm-leader">m1 (10.1.0.2:2377)</dd>"#), "{html}");
    assert!(html.contains(r#"<dd id="consul-leader">10.1.0.2:8300</dd>"#), "{html}");
    assert!(html.contains(r#"<dd id="managers-reachable">1 of 1</dd>"#), "{html}");
}

#[test]
fn the_host_header_must_be_an_address_or_localhost() {
    use crate::control_plane::web::host_allowed;
    for ok in ["127.0.0.1:9464", "localhost:9464", "LOCALHOST", "[::1]:9464", "10.0.0.1", ""] {
        assert!(host_allowed(ok), "{ok}");
    }
    for bad in ["evil.example:9464", "127.0.0.1.nip.io", "[evil]:1"] {
        assert!(!host_allowed(bad), "{bad}");
    }
}
