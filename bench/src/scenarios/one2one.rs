//! The `one2one` scenario: users in friend pairs, each pair in its direct chat,
//! every user connected and sending to its friend.
//!
//! Setup (all reused across runs): N users `bench_o_{i}`; users `2p` and `2p + 1` are
//! friends and share a DM (`POST /v1/dms` gives the same chat every time), whose last
//! `seq` is read from `GET /v1/chats` as the baseline of the run. The run itself is
//! [`messaging::run`].

use clap::Args;
use natter_client::{HttpClient, Login};

use crate::accounts;
use crate::error::BenchError;
use crate::progress;
use crate::report::Report;
use crate::scenarios::Options;
use crate::scenarios::messaging::setup::{befriend, in_parallel};
use crate::scenarios::messaging::{self, ChatPlan, MessagingArgs, Plan, UserPlan};
use crate::target::Target;

/// The user names of this scenario are `{USER_PREFIX}{i}`.
const USER_PREFIX: &str = "bench_o_";

/// The flags of the `one2one` scenario.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "one2one options")]
pub(crate) struct OneToOneArgs {
    /// Users (one2one: an even number, in friend pairs, each connects once and sends;
    /// presence: each with --friends friends).
    #[arg(long, default_value_t = 1000)]
    pub(crate) users: usize,
}

/// Checks the flags before anything starts.
///
/// # Errors
/// [`BenchError::Usage`] for an odd or too small number of users, or a shared flag
/// out of range.
pub(crate) fn check_args(
    args: &OneToOneArgs,
    messaging: &MessagingArgs,
    options: &Options,
    open_files: u64,
) -> Result<(), BenchError> {
    if args.users < 2 || !args.users.is_multiple_of(2) {
        return Err(BenchError::Usage(
            "--users must be an even number of at least 2 (users come in friend pairs)".into(),
        ));
    }
    messaging::check_args(messaging, options, args.users, open_files)
}

/// Runs the scenario against `target`.
///
/// # Errors
/// As [`messaging::run`]; [`BenchError::Setup`] if natterd refuses the setup.
pub(crate) fn run(
    target: &Target,
    options: &Options,
    args: &OneToOneArgs,
    messaging: &MessagingArgs,
) -> Result<Report, BenchError> {
    let plan = prepare(&target.http, args.users)?;
    messaging::run(target, options, messaging, &plan, "one2one")
}

/// Accounts, friendships and DMs for `users` users.
fn prepare(http: &HttpClient, users: usize) -> Result<Plan, BenchError> {
    println!("one2one: preparing {users} accounts ({USER_PREFIX}0 …), friendships and direct chats");
    let bar = progress::bar(users as u64, "accounts");
    let accounts = accounts::prepare(http, USER_PREFIX, users, &bar)?;
    if let Some(first) = &accounts.first_error {
        eprintln!("one2one: {} accounts failed; first: {first}", accounts.errors);
    }
    let pairs: Vec<(usize, &Login, &Login)> = (0..users / 2)
        .filter_map(|p| {
            let a = accounts.logins.get(2 * p)?.as_ref()?;
            let b = accounts.logins.get(2 * p + 1)?.as_ref()?;
            Some((2 * p, a, b))
        })
        .collect();
    let bar = progress::bar(pairs.len() as u64, "DMs");
    let chats = in_parallel(&pairs, &bar, |&(a_index, a, b)| {
        let b_name = format!("{USER_PREFIX}{}", a_index + 1);
        befriend(http, a, b, &b_name)?;
        let chat_id = http.direct_chat(&a.token, b.user_id)?;
        let baseline = http
            .chats(&a.token)?
            .into_iter()
            .find(|c| c.chat_id == chat_id)
            .map_or(0, |c| c.last_seq);
        Ok::<_, natter_client::ClientError>(ChatPlan { chat_id, baseline })
    })?;

    let mut plan = Plan {
        setup_errors: accounts.errors,
        ..Plan::default()
    };
    let mut first_error = None;
    for ((_, a, b), chat) in pairs.iter().zip(chats) {
        match chat {
            Ok(chat) => {
                let index = plan.chats.len();
                plan.chats.push(chat);
                for login in [a, b] {
                    plan.users.push(UserPlan {
                        user_id: login.user_id,
                        token: login.token.clone(),
                        chat: index,
                        sends: true,
                    });
                }
            }
            Err(e) => {
                plan.setup_errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!(
            "one2one: {} pairs could not be set up; first: {e}",
            pairs.len() - plan.chats.len()
        );
    }
    if plan.chats.is_empty() {
        return Err(BenchError::Setup("no friend pair could be set up".into()));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn shared_args() -> MessagingArgs {
        MessagingArgs {
            window: 16,
            threads: 1,
            warmup: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(5),
            conversation: false,
        }
    }

    #[test]
    fn users_come_in_pairs() {
        let options = Options {
            duration: Duration::from_secs(10),
            rate: None,
            text_bytes: None,
        };
        let check = |users| check_args(&OneToOneArgs { users }, &shared_args(), &options, 20_000);
        assert!(check(1000).is_ok());
        assert!(check(2).is_ok());
        assert!(check(0).is_err());
        assert!(check(999).is_err());
        assert!(check(20_000).is_err(), "beyond the open-file limit");
    }
}
