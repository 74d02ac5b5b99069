//! The `git-dispatch` executable: parse the command line, run the command, exit with its code.

fn main() {
    std::process::exit(git_dispatch::main(std::env::args_os()));
}
