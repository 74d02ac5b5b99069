//! `git-dispatch validate FILE...`, run by a submitter inside their clone before pushing: exit 0 for valid
//! requests; exit 1 naming every invalid file and the field at fault.

use crate::support::{RunOutput, World};

fn validate(world: &World, files: &[&str]) -> RunOutput {
    let mut cmd = world.dispatcher();
    cmd.current_dir(&world.submitter.dir)
        .arg("validate")
        .args(files);
    world.output(cmd)
}

#[test]
fn validate_accepts_a_valid_request() {
    let world = World::new().build();
    world
        .submitter
        .write("requests/ok.yml", "kind: count\nparams:\n  count: 3\n");

    validate(&world, &["requests/ok.yml"]).assert_exit(0);
}

#[test]
fn validate_rejects_a_params_schema_violation_naming_file_and_field() {
    let world = World::new().build();
    world
        .submitter
        .write("requests/bad.yml", "kind: count\nparams:\n  count: ten\n");

    let out = validate(&world, &["requests/bad.yml"]);
    out.assert_exit(1);
    let text = out.all_output();
    assert!(
        text.contains("requests/bad.yml"),
        "the file is not named:\n{out}"
    );
    assert!(
        text.contains("params.count"),
        "the field is not named:\n{out}"
    );
}

#[test]
fn validate_reports_every_invalid_file_not_just_the_first() {
    let world = World::new().build();
    world.submitter.write("requests/good.yml", "kind: echo\n");
    world
        .submitter
        .write("requests/stray.yml", "kind: nosuch\n");
    world
        .submitter
        .write("requests/painted.yml", "kind: echo\ncolour: blue\n");

    let out = validate(
        &world,
        &[
            "requests/stray.yml",
            "requests/good.yml",
            "requests/painted.yml",
        ],
    );
    out.assert_exit(1);
    let text = out.all_output();
    for needle in [
        "requests/stray.yml",
        "nosuch",
        "requests/painted.yml",
        "colour",
    ] {
        assert!(text.contains(needle), "`{needle}` is not reported:\n{out}");
    }
    assert!(
        !text.contains("requests/good.yml:"),
        "the valid file is reported as an error:\n{out}"
    );
}

#[test]
fn validate_index_names_the_kind_and_field_of_a_bad_runs_on() {
    let world = World::new().build();
    world.submitter.write(
        "handlers/index.yml",
        format!(
            "{}gpu:\n  handler: echo.sh\n  runs_on: [gpu, \"big box\"]\nlone:\n  handler: echo.sh\n  runs_on: gpu\nfine:\n  handler: echo.sh\n  runs_on: [gpu, linux-x86_64]\n",
            crate::support::DEFAULT_INDEX
        ),
    );

    let out = validate(&world, &["--index"]);
    out.assert_exit(1);
    let text = out.all_output();
    for needle in [
        "`handlers/index.yml`: `gpu.runs_on`: `big box` is not a valid label",
        "`handlers/index.yml`: `lone.runs_on`: expected a list of labels like `[gpu]`, got the string \"gpu\"",
    ] {
        assert!(text.contains(needle), "`{needle}` is not reported:\n{out}");
    }
    assert!(
        !text.contains("fine"),
        "a valid runs_on is reported:\n{out}"
    );
    assert!(text.contains("2 problem(s)"), "{out}");
}
