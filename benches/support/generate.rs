//! Synthetic registry snapshots of any size for benchmarks and load runs. Actor `i` is
//! `agt-bench-<i>` with principals `svc-<i>` and `shared`, subjects `agt-bench-<i>` and
//! `iam:agt-bench-<i>`, and `max_ttl_hours` 8, so `sign` with ttl 4 and principal `shared` is
//! allowed for every actor.

use std::fmt::Write as _;

/// The snapshot JSON for `actors` generated actors.
pub fn snapshot_json(actors: usize) -> String {
    let mut out = String::with_capacity(actors * 260 + 200);
    out.push_str(
        r#"{"schema_version":"1.0","generated_at":"2026-11-23T00:00:00Z","source":"flex-auth synthetic benchmark registry","actors":["#,
    );
    for i in 0..actors {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"id":"agt-bench-{i}","type":"agent","principals":["svc-{i}","shared"],"allowed_subjects":["agt-bench-{i}","iam:agt-bench-{i}"],"max_ttl_hours":8,"default_ttl_hours":4,"attributes":{{"owner":"team-{t}","environment":"production"}}}}"#,
            t = i % 97
        );
    }
    out.push_str("]}");
    out
}
