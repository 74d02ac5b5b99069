//! `demo`: piped to a file, it shows every step and keeps its table aligned.

use super::everyday;
use crate::support::World;

#[test]
fn demo_piped_to_a_file_shows_every_step_and_keeps_its_table_aligned() {
    let world = World::new().build();
    let out = everyday(&world, &world.root, &["demo"]);
    out.assert_exit(0);

    // Standard output is a file here: step 3 must still say what the dispatcher did.
    let stdout = &out.stdout;
    let step3 = stdout
        .split_once("\n3. ")
        .and_then(|(_, rest)| rest.split_once("\n4. "))
        .map(|(step, _)| step)
        .unwrap_or_else(|| panic!("no steps 3 and 4:\n{out}"));
    assert!(
        step3
            .lines()
            .skip(1)
            .any(|l| l.contains("recorded 7 outcome")),
        "step 3 is empty when piped:\n{out}"
    );

    // Every row's columns start where the header's do, whatever the length of a kind or an id.
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("id ") && l.contains(" state "))
        .unwrap_or_else(|| panic!("no table header:\n{out}"));
    let columns: Vec<usize> = ["kind", "state"]
        .iter()
        .map(|c| lines[header].find(&format!(" {c}")).expect("a column") + 1)
        .collect();
    let rows: Vec<&str> = lines[header + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .copied()
        .collect();
    assert_eq!(rows.len(), 7, "{out}");
    assert!(
        rows.iter().any(|r| r.contains("reboot-the-world")),
        "the long kind is missing:\n{out}"
    );
    for row in rows {
        for &at in &columns {
            assert!(
                row.len() > at && row.as_bytes()[at - 1] == b' ' && row.as_bytes()[at] != b' ',
                "a column of this row does not start under its header (offset {at}):\n{}\n{row}",
                lines[header]
            );
        }
    }
}
