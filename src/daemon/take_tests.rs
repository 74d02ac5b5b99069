//! Unit tests of `take`: the keys rejected requests are recorded under.

use super::*;

fn taken(keys: &[&str]) -> impl Fn(&str) -> bool {
    let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    move |k| keys.iter().any(|t| t == k)
}

#[test]
fn a_rejection_with_a_free_id_is_recorded_under_it() {
    assert_eq!(rejected_key(Some("job-1"), "x.yml", taken(&[])), "job-1");
}

#[test]
fn a_rejection_never_takes_the_key_of_an_outcome() {
    assert_eq!(
        rejected_key(Some("job-1"), "x.yml", taken(&["job-1"])),
        "job-1~1"
    );
    assert_eq!(
        rejected_key(Some("job-1"), "x.yml", taken(&["job-1", "job-1~1"])),
        "job-1~2"
    );
    assert_eq!(
        rejected_key(None, "build.yml", taken(&["build"])),
        "build~1"
    );
}

#[test]
fn a_rejection_without_an_id_uses_the_file_stem_where_it_is_a_valid_name() {
    assert_eq!(rejected_key(None, "build.yml", taken(&[])), "build");
    assert_eq!(rejected_key(None, "build.yaml", taken(&[])), "build");
    // A stem that is no valid id is made one, and suffixed so it cannot be an id submitted.
    assert_eq!(rejected_key(None, "my build.yml", taken(&[])), "my_build~1");
    assert_eq!(rejected_key(None, "_x.yml", taken(&[])), "x_x~1");
    // A file whose name has no request suffix is named after the whole name.
    assert_eq!(rejected_key(None, "notes.txt", taken(&[])), "notes.txt~1");
}
