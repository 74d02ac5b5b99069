//! The example inbox this repository itself is: its handlers and schemas, compiled into the binary so
//! `demo`, `selftest` and `init` can lay it out anywhere.

/// A file of the example inbox: its path, contents and whether it is executable.
pub(crate) struct File {
    pub path: &'static str,
    pub contents: &'static str,
    pub executable: bool,
}

macro_rules! file {
    ($path:literal, $exec:literal) => {
        File {
            path: $path,
            contents: include_str!(concat!("../../", $path)),
            executable: $exec,
        }
    };
}

pub(crate) const EXAMPLE_INBOX: &[File] = &[
    file!("handlers/index.yml", false),
    file!("handlers/echo.sh", true),
    file!("handlers/greet.py", true),
    file!("handlers/fail.sh", true),
    file!("handlers/sleep.sh", true),
    file!("handlers/notify.py", true),
    file!("schemas/request.schema.json", false),
    file!("schemas/greet.schema.json", false),
    file!("schemas/fail.schema.json", false),
    file!("schemas/sleep.schema.json", false),
    file!("schemas/notify.schema.json", false),
    File {
        path: "requests/.gitkeep",
        contents: "",
        executable: false,
    },
    File {
        path: "processed/.gitkeep",
        contents: "",
        executable: false,
    },
    File {
        path: "logs/.gitkeep",
        contents: "",
        executable: false,
    },
];

/// What `init` adds for the inbox's own CI: a golden fixture of the example kind, blessed, and a
/// workflow that replays it.
pub(crate) const INIT_EXTRAS: &[File] = &[
    file!("tests/fixtures/echo-hello/request.yml", false),
    file!("tests/fixtures/echo-hello/expected.status.json", false),
    file!("tests/fixtures/echo-hello/expected.log", false),
    File {
        path: ".github/workflows/replay.yml",
        contents: include_str!("../../contrib/replay-workflow.yml"),
        executable: false,
    },
];

/// Writes the example inbox under `dir`.
pub(crate) fn write(dir: &std::path::Path) -> std::io::Result<()> {
    write_files(dir, EXAMPLE_INBOX)
}

/// Writes `files` under `dir`.
pub(crate) fn write_files(dir: &std::path::Path, files: &[File]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for file in files {
        let path = dir.join(file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, file.contents)?;
        let mode = if file.executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}
