//! The command line: exit codes and messages for good and bad input.

mod common;

use common::*;

#[test]
fn check_accepts_the_example_scripts() {
    let (status, stdout, stderr) = run_cli(&[
        "check",
        "scripts/chat.rhai",
        "scripts/echo.rhai",
        "scripts/uppercase.rhai",
        "scripts/rooms.rhai",
    ]);
    assert!(status.success(), "{stderr}");
    // No typo, no misspelt callback in them.
    assert!(!stderr.contains("warning"), "{stderr}");
    // The classes chat.rhai names are checked too.
    assert!(stdout.contains("scripts/ChatServer.rhai"), "{stdout}");
    assert!(stdout.contains("scripts/ChatConnection.rhai"), "{stdout}");
    for class in ["Lobby", "Room", "Member"] {
        assert!(
            stdout.contains(&format!("ok    scripts/{class}.rhai")),
            "{stdout}"
        );
    }
}

#[test]
fn check_reports_a_syntax_error_with_file_line_col_and_the_source_line() {
    let (status, _, stderr) = run_cli(&["check", &fixture("broken.rhai")]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("tests/fixtures/broken.rhai:3:"), "{stderr}");
    assert!(stderr.contains("let y = (x + ;"), "{stderr}");
    assert!(stderr.contains('^'), "{stderr}");
}

#[test]
fn run_reports_a_broken_script_and_exits_1() {
    let (status, _, stderr) = run_cli(&["run", &fixture("broken.rhai"), "--port", "0"]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("tests/fixtures/broken.rhai:3:"), "{stderr}");
}

#[test]
fn run_of_a_script_that_starts_nothing_exits_0() {
    let (status, stdout, stderr) = run_cli(&["run", &fixture("nothing.rhai")]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("nothing to serve"));
}

#[test]
fn missing_file_is_one_line_and_exit_2() {
    let (status, _, stderr) = run_cli(&["run", "no/such/script.rhai"]);
    assert_eq!(status.code(), Some(2));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no/such/script.rhai"), "{stderr}");
}

#[test]
fn check_of_a_missing_file_is_one_line_and_exit_2() {
    let (status, stdout, stderr) = run_cli(&["check", "scripts/echo.rhai", "no/such/file.rhai"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no/such/file.rhai"), "{stderr}");
    // Nothing is checked when the input is bad.
    assert_eq!(stdout, "");
}

#[test]
fn help_of_static_names_the_server_option_static_dir() {
    let (status, stdout, _) = run_cli(&["run", "--help"]);
    assert!(status.success());
    let static_help = stdout
        .split("--static <DIR>")
        .nth(1)
        .expect("--static in the help");
    let static_help = &static_help[..static_help.find("--tls-cert").unwrap_or(static_help.len())];
    assert!(static_help.contains("`staticDir`"), "{static_help}");
}

#[test]
fn unknown_option_is_one_line_and_exit_2() {
    let (status, _, stderr) = run_cli(&["run", "scripts/echo.rhai", "--prot", "1"]);
    assert_eq!(status.code(), Some(2));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--prot"), "{stderr}");
}

#[test]
fn port_in_use_is_a_clear_error_and_exit_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (status, _, stderr) = run_cli(&["run", "scripts/echo.rhai", "--port", &port]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
}

#[test]
fn bad_server_options_are_catchable_script_errors() {
    let (status, stdout, stderr) = run_cli(&["run", &fixture("bad_option.rhai"), "--port", "0"]);
    assert!(
        stdout.contains("caught: unknown option \"prot\""),
        "{stdout}"
    );
    // Uncaught at top level: the run fails with the location of the call.
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("tests/fixtures/bad_option.rhai:7:"),
        "{stderr}"
    );
    assert!(stderr.contains("dataType"), "{stderr}");
}

#[test]
fn scripts_cannot_import_files_or_eval_strings() {
    let (status, stdout, stderr) = run_cli(&["run", &fixture("sandbox.rhai")]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("import refused"), "{stdout}");
    assert!(!stdout.contains("imported"), "{stdout}");
    let (status, _, stderr) = run_cli(&["check", &fixture("sandbox_eval.rhai")]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("sandbox_eval.rhai:2:"), "{stderr}");
}

#[test]
fn run_script_paths_are_relative_to_the_test_file_then_to_the_working_directory() {
    // The test file is far from the working directory (the repo root): `server.rhai` is found
    // beside it, `scripts/echo.rhai` (not beside it) from the working directory.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(
        dir.path().join("server.rhai"),
        r#"WebSocketServer.new(#{ onConnection: |wss, event| #{ onMessage: |ws, event| ws.send("beside: " + event.data) } });"#,
    )
    .unwrap();
    let test = dir.path().join("sub/paths.rhai");
    std::fs::write(
        &test,
        r#"
fn ask(port) {
    let got = [];
    WebSocket.new(`ws://127.0.0.1:${port}/`, #{
        onOpen: |ws, event| ws.send("hi"),
        onMessage: |ws, event| got.push(event.data),
    });
    wait_until(|| got.len() == 1);
    got[0]
}

fn test_beside_the_test_file() {
    let port = free_port();
    run_script("../server.rhai", #{ port: port });
    assert_eq(ask(port), "beside: hi");
}

fn test_from_the_working_directory() {
    let port = free_port();
    run_script("scripts/echo.rhai", #{ port: port });
    assert_eq(ask(port), "hi");
}
"#,
    )
    .unwrap();
    let (status, stdout, stderr) = run_cli(&["test", test.to_str().unwrap()]);
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.ends_with("2 passed, 0 failed\n"), "{stdout}");
}

#[test]
fn a_constructor_gets_any_number_of_arguments() {
    let (status, stdout, stderr) = run_cli(&["run", "tests/fixtures/classes/many_args.rhai"]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("sum 28"), "{stdout}");
    assert!(
        stdout.contains("too many: cs.Seven.new: the constructor takes 7 argument(s), got 8"),
        "{stdout}"
    );
}

#[test]
fn a_script_error_names_its_position_once() {
    let (status, _, stderr) = run_cli(&["run", "tests/fixtures/undefined_variable.rhai"]);
    assert_eq!(status.code(), Some(1));
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(
            "error: tests/fixtures/undefined_variable.rhai:3:11: Variable not found: no_such ("
        ),
        "{stderr}"
    );
    assert_eq!(stderr.matches(":3:11").count(), 1, "{stderr}");
}

#[test]
fn class_methods_and_entry_functions_are_callable_from_other_files() {
    let (status, stdout, stderr) = run_cli(&["run", "tests/fixtures/classes/cross.rhai"]);
    assert!(status.success(), "{stderr}");
    // Lobby.enter calls Room's `join` on its instance, and `shout` of the entry script.
    assert!(
        stdout.contains("ann is number 1\nbob is number 2"),
        "{stdout}"
    );
    // Still an error when the class does not define it (uncaught, the error says more:
    // a_method_an_object_does_not_have_is_an_error_naming_its_class_and_the_call).
    assert!(
        stdout.contains("missing: Function not found: no_such_method (object)"),
        "{stdout}"
    );
}

#[test]
fn a_server_that_cannot_listen_gets_on_error_then_on_terminate() {
    let (status, stdout, stderr) = run_cli(&["run", "tests/fixtures/listen_fails.rhai"]);
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "onError 30\nonTerminate", "{stderr}");
}

#[test]
fn check_reports_an_unknown_variable_in_a_closure_or_a_function_where_it_is_written() {
    for (file, at, name) in [
        ("closure.rhai", "closure.rhai:4:40:", "evnt"),
        ("function.rhai", "function.rhai:6:13:", "greting"),
    ] {
        let path = fixture(&format!("typos/{file}"));
        let (status, _, stderr) = run_cli(&["check", &path]);
        assert_eq!(status.code(), Some(1), "{stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: tests/fixtures/typos/"),
            "{stderr}"
        );
        assert!(
            first.contains(&format!("{at} Variable not found: {name}")),
            "{stderr}"
        );
        // And `run` refuses it at load, before anything listens.
        let (status, stdout, stderr) = run_cli(&["run", &path]);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(at), "{stderr}");
        assert!(!stderr.contains("listening"), "{stderr}");
        assert!(!stdout.contains("hi"), "{stdout}");
    }
}

#[test]
fn a_misspelt_callback_name_is_a_warning_naming_the_closest_callback() {
    let path = fixture("typos/misspelt.rhai");
    let (status, stdout, stderr) = run_cli(&["check", &path]);
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("tests/fixtures/typos/Typo.rhai"),
        "{stdout}"
    );
    for expected in [
        "warning: tests/fixtures/typos/misspelt.rhai:5:35: onMesage is not a callback, so wshost never calls it: did you mean onMessage?",
        "warning: tests/fixtures/typos/Typo.rhai:6:4: onTerminat is not a callback, so wshost never calls it: did you mean onTerminate?",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(expected)),
            "missing {expected:?} in\n{stderr}"
        );
    }
    // Real callbacks and other methods are not warned about.
    assert_eq!(stderr.matches("warning:").count(), 2, "{stderr}");

    // `run` says the same in its log, and runs the script.
    let (status, stdout, stderr) = run_cli(&["run", &path]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("stopped"), "{stdout}");
    let warned = |what: &str| {
        stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains(what))
    };
    assert!(
        warned("misspelt.rhai:5:35: onMesage is not a callback"),
        "{stderr}"
    );
    assert!(
        warned("Typo.rhai:6:4: onTerminat is not a callback"),
        "{stderr}"
    );
}

#[test]
fn an_object_used_again_inside_a_method_called_through_it_says_what_to_do() {
    let (status, _, stderr) = run_cli(&["run", &fixture("objects/data_race.rhai")]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("take the object in a variable first (`let x = a.items.x; x.method()`)"),
        "{stderr}"
    );
}

#[test]
fn a_method_an_object_does_not_have_is_an_error_naming_its_class_and_the_call() {
    let (status, _, stderr) = run_cli(&["run", &fixture("objects4d/no_method.rhai")]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "no_method.rhai:3:7: Agent has no method shout \
             (tests/fixtures/objects4d/Agent.rhai defines no fn shout)"
        ),
        "{stderr}"
    );
    let (status, _, stderr) = run_cli(&["run", &fixture("objects4d/wrong_count.rhai")]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("wrong_count.rhai:3:16: Agent.tell takes 1 argument(s), got 0"),
        "{stderr}"
    );
}

#[test]
fn check_reads_cs_names_from_the_code_not_from_comments_or_strings() {
    let (status, stdout, stderr) = run_cli(&["check", &fixture("check_names/app.rhai")]);
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("ok    tests/fixtures/check_names/Real.rhai"),
        "{stdout}"
    );
    assert!(
        stderr.contains("app.rhai:4:12: cs.Missing: no class file"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("Nope") && !stderr.contains("Ghost"),
        "{stderr}"
    );
}

#[test]
fn durations_past_a_year_are_bad_input_not_a_panic() {
    for args in [
        &[
            "run",
            "scripts/echo.rhai",
            "--port",
            "0",
            "--drain-timeout",
            "1e300",
        ][..],
        &["test", "tests/scripts", "--timeout", "18446744073709551615"][..],
        &[
            "run",
            "scripts/echo.rhai",
            "--port",
            "0",
            "--idle-timeout",
            "1e20",
        ][..],
        &[
            "run",
            "scripts/echo.rhai",
            "--port",
            "0",
            "--callback-timeout",
            "18446744073709551615",
        ][..],
    ] {
        let (status, _, stderr) = run_cli(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("(a year)"), "{args:?}: {stderr}");
    }
}
