//! The `group` scenario: G groups of M members (at most 100, owner included), S
//! members of each sending, every member connected and receiving.
//!
//! Setup (reused across runs): G·M users `bench_g_{i}`; group `g` is users
//! `g·M .. (g+1)·M`, owned by the first, who befriends the others (a group's members
//! must be the owner's friends). Each group is named `natter-bench {g}/{M}`; a group
//! of the owner with that name and exactly these members is reused, with its last
//! `seq` as the run's baseline, otherwise a new one is created. Each user is in one
//! group of the run; the senders are the first S members of each group (the owner
//! first). The run itself is [`messaging::run`].

use clap::Args;
use natter_client::{ClientError, HttpClient, Login};

use crate::accounts;
use crate::error::BenchError;
use crate::progress;
use crate::report::Report;
use crate::scenarios::Options;
use crate::scenarios::messaging::setup::{befriend, in_parallel};
use crate::scenarios::messaging::{self, ChatPlan, MessagingArgs, Plan, UserPlan};
use crate::target::Target;

/// The user names of this scenario are `{USER_PREFIX}{i}`.
const USER_PREFIX: &str = "bench_g_";

/// Most members of a group, owner included (natterd's limit).
const MAX_MEMBERS: usize = 100;

/// The flags of the `group` scenario.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "group options")]
pub(crate) struct GroupArgs {
    /// Groups, each with its own members.
    #[arg(long, default_value_t = 10)]
    pub(crate) groups: usize,
    /// Members per group, owner included (2 to 100).
    #[arg(long, default_value_t = 100)]
    pub(crate) members: usize,
    /// Sending members per group.
    #[arg(long, default_value_t = 10)]
    pub(crate) senders: usize,
}

/// Checks the flags before anything starts.
///
/// # Errors
/// [`BenchError::Usage`] for sizes out of range or a shared flag out of range.
pub(crate) fn check_args(
    args: &GroupArgs,
    messaging: &MessagingArgs,
    options: &Options,
    open_files: u64,
) -> Result<(), BenchError> {
    if args.groups == 0 {
        return Err(BenchError::Usage("--groups must be at least 1".into()));
    }
    if !(2..=MAX_MEMBERS).contains(&args.members) {
        return Err(BenchError::Usage(format!(
            "--members must be 2 to {MAX_MEMBERS} (owner included)"
        )));
    }
    if !(1..=args.members).contains(&args.senders) {
        return Err(BenchError::Usage("--senders must be 1 to --members".into()));
    }
    let connections = args.groups.saturating_mul(args.members);
    messaging::check_args(messaging, options, connections, open_files)
}

/// Runs the scenario against `target`.
///
/// # Errors
/// As [`messaging::run`]; [`BenchError::Setup`] if natterd refuses the setup.
pub(crate) fn run(
    target: &Target,
    options: &Options,
    args: &GroupArgs,
    messaging: &MessagingArgs,
) -> Result<Report, BenchError> {
    let plan = prepare(&target.http, args)?;
    messaging::run(target, options, messaging, &plan, "group")
}

/// Accounts, friendships and groups.
fn prepare(http: &HttpClient, args: &GroupArgs) -> Result<Plan, BenchError> {
    let (groups, members) = (args.groups, args.members);
    let users = groups * members;
    println!(
        "group: preparing {users} accounts ({USER_PREFIX}0 …), friendships and {groups} groups of {members}"
    );
    let bar = progress::bar(users as u64, "accounts");
    let accounts = accounts::prepare(http, USER_PREFIX, users, &bar)?;
    if let Some(first) = &accounts.first_error {
        eprintln!("group: {} accounts failed; first: {first}", accounts.errors);
    }
    let login = |i: usize| accounts.logins.get(i).and_then(Option::as_ref);
    // Only groups whose every member logged in take part.
    let complete: Vec<usize> = (0..groups)
        .filter(|g| (g * members..(g + 1) * members).all(|i| login(i).is_some()))
        .collect();

    let friendships: Vec<(&Login, &Login, usize)> = complete
        .iter()
        .flat_map(|&g| (g * members + 1..(g + 1) * members).map(move |i| (g * members, i)))
        .filter_map(|(owner, member)| Some((login(owner)?, login(member)?, member)))
        .collect();
    let bar = progress::bar(friendships.len() as u64, "friends");
    let befriended = in_parallel(&friendships, &bar, |&(owner, member, index)| {
        befriend(http, owner, member, &format!("{USER_PREFIX}{index}"))
    })?;
    let mut setup_errors = accounts.errors;
    let mut unfriended = Vec::new();
    for ((owner, _, _), result) in friendships.iter().zip(&befriended) {
        if let Err(e) = result {
            setup_errors += 1;
            unfriended.push((owner.user_id, e.to_string()));
        }
    }
    if let Some((_, e)) = unfriended.first() {
        eprintln!("group: {} friendships failed; first: {e}", unfriended.len());
    }

    let ready: Vec<(usize, &Login, Vec<u64>)> = complete
        .iter()
        .filter_map(|&g| {
            let owner = login(g * members)?;
            if unfriended.iter().any(|(id, _)| *id == owner.user_id) {
                return None;
            }
            let ids = (g * members..(g + 1) * members)
                .filter_map(|i| login(i).map(|l| l.user_id))
                .collect();
            Some((g, owner, ids))
        })
        .collect();
    let bar = progress::bar(ready.len() as u64, "groups");
    let chats = in_parallel(&ready, &bar, |(g, owner, ids)| {
        find_or_create_group(http, owner, &format!("natter-bench {g}/{members}"), ids)
    })?;

    let mut plan = Plan::default();
    let mut first_error = None;
    for ((g, _, _), chat) in ready.iter().zip(chats) {
        match chat {
            Ok(chat) => {
                let index = plan.chats.len();
                plan.chats.push(chat);
                for (j, i) in (g * members..(g + 1) * members).enumerate() {
                    if let Some(l) = login(i) {
                        plan.users.push(UserPlan {
                            user_id: l.user_id,
                            token: l.token.clone(),
                            chat: index,
                            sends: j < args.senders,
                        });
                    }
                }
            }
            Err(e) => {
                setup_errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("group: some groups could not be created; first: {e}");
    }
    // Groups left out for a failed account or friendship were counted above.
    plan.setup_errors = setup_errors;
    if plan.chats.is_empty() {
        return Err(BenchError::Setup("no group could be set up".into()));
    }
    Ok(plan)
}

/// The owner's group named `name` with exactly the members `ids` (owner included),
/// created if there is none.
fn find_or_create_group(
    http: &HttpClient,
    owner: &Login,
    name: &str,
    ids: &[u64],
) -> Result<ChatPlan, ClientError> {
    let mut wanted = ids.to_vec();
    wanted.sort_unstable();
    for chat in http.chats(&owner.token)? {
        if chat.kind != "group" || chat.name != name {
            continue;
        }
        let group = http.group(&owner.token, chat.chat_id)?;
        let mut members: Vec<u64> = group.members.iter().map(|m| m.user_id).collect();
        members.sort_unstable();
        if group.owner == owner.user_id && members == wanted {
            return Ok(ChatPlan {
                chat_id: chat.chat_id,
                baseline: chat.last_seq,
            });
        }
    }
    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != owner.user_id).collect();
    let chat_id = http.create_group(&owner.token, name, &others)?;
    Ok(ChatPlan { chat_id, baseline: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn group_sizes_are_checked() {
        let messaging = MessagingArgs {
            window: 16,
            threads: 1,
            warmup: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(5),
            conversation: false,
        };
        let options = Options {
            duration: Duration::from_secs(10),
            rate: None,
            text_bytes: None,
        };
        let check = |groups, members, senders| {
            check_args(
                &GroupArgs {
                    groups,
                    members,
                    senders,
                },
                &messaging,
                &options,
                20_000,
            )
        };
        assert!(check(10, 100, 10).is_ok());
        assert!(check(10, 101, 10).is_err(), "over natterd's group limit");
        assert!(check(10, 1, 1).is_err());
        assert!(check(0, 100, 10).is_err());
        assert!(check(10, 100, 0).is_err());
        assert!(check(10, 100, 101).is_err());
        assert!(check(200, 100, 10).is_err(), "beyond the open-file limit");
    }
}
