//! `natter`: chat with natterd from a terminal, on natter-client.
//!
//! This file parses the command line, finds the profile and the server, runs one verb,
//! and turns any failure into one line on stderr (`natter: …`) and exit status 1
//! (usage errors: status 2, as clap does). The verbs are in `commands.rs` (one-shot)
//! and `live_commands.rs` (`tail`, `chat`); `clients/cli/README.md` documents them.

#![forbid(unsafe_code)]

mod cli;
mod commands;
mod error;
mod format;
mod live;
mod live_commands;
mod password;
mod profile;
mod resolve;

use std::process::ExitCode;

use clap::Parser;
use natter_client::HttpClient;

use crate::cli::{Cli, Command, FriendsAction, GroupAction};
use crate::error::CliError;
use crate::profile::Profile;
use crate::resolve::Account;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if !e.use_stderr() {
                // --help, --version
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            eprintln!(
                "natter: {} (see `natter --help`)",
                usage_error_line(&e.render().to_string())
            );
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) | Err(CliError::OutputClosed) => ExitCode::SUCCESS,
        Err(CliError::Interrupted) => ExitCode::from(130),
        Err(e) => {
            let line = e.to_string().replace('\n', " ");
            eprintln!("natter: {line}");
            ExitCode::FAILURE
        }
    }
}

/// clap's message in one line: its first paragraph (what is wrong, e.g. "the following
/// required arguments were not provided:" and the names on the lines below), without the
/// usage and hint paragraphs that follow the first blank line.
fn usage_error_line(rendered: &str) -> String {
    let words: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = words.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line).to_owned();
    if line.is_empty() {
        "invalid arguments".to_owned()
    } else {
        line
    }
}

/// Runs one verb.
fn run(cli: Cli) -> Result<(), CliError> {
    let profile = Profile::open(cli.profile)?;
    let stored = profile.session()?;
    let server = cli
        .server
        .clone()
        .or_else(|| stored.as_ref().map(|s| s.server.clone()))
        .unwrap_or_else(|| commands::DEFAULT_SERVER.to_owned());
    let server = HttpClient::new(&server).base_url().to_owned();
    match cli.command {
        Command::Signup { name, password } => {
            let password = password::obtain(password, "password: ")?;
            return commands::signup(&profile, &server, &name, &password);
        }
        Command::Login { name, password } => {
            let password = password::obtain(password, &format!("password for {name}: "))?;
            return commands::login(&profile, &server, &name, &password);
        }
        _ => {}
    }
    let session = stored.ok_or_else(|| CliError::NotLoggedIn {
        profile: profile.display(),
    })?;
    let account = Account {
        http: HttpClient::new(&server),
        server,
        session,
    };
    match cli.command {
        Command::Signup { .. } | Command::Login { .. } => Ok(()),
        Command::Logout => commands::logout(&profile, &account),
        Command::Friends { action: None } => commands::friends(&account),
        Command::Friends {
            action: Some(FriendsAction::Add { name }),
        } => commands::friend_add(&account, &name),
        Command::Friends {
            action: Some(FriendsAction::Accept { name }),
        } => commands::friend_accept(&account, &name),
        Command::Friends {
            action: Some(FriendsAction::Remove { name }),
        } => commands::friend_remove(&account, &name),
        Command::Dm { name } => commands::dm(&account, &name),
        Command::Group {
            action: GroupAction::Create { name, members },
        } => commands::group_create(&account, &name, &members),
        Command::Group {
            action: GroupAction::Add { group, name },
        } => commands::group_add(&account, &group, &name),
        Command::Group {
            action: GroupAction::Remove { group, name },
        } => commands::group_remove(&account, &group, &name),
        Command::Chats => commands::chats(&account),
        Command::Send { chat, text } => commands::send(&account, &profile, &chat, &text),
        Command::History { chat, limit } => commands::history(&account, &profile, &chat, limit),
        Command::Search {
            query,
            chat,
            limit,
            relevance,
        } => commands::search(&account, &query.join(" "), chat.as_deref(), limit, relevance),
        Command::Tail => live_commands::tail(&account, &profile),
        Command::Chat { chat, last } => live_commands::chat(&account, &profile, &chat, last),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_error_is_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  <NAME>\n\nUsage: natter signup <NAME>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_error_line(rendered),
            "the following required arguments were not provided: <NAME>"
        );
        assert_eq!(usage_error_line(""), "invalid arguments");
    }
}
