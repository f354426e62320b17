//! The command line of `natter`: global options and one subcommand per verb, as clap
//! derive types. What each does is in `clients/cli/README.md` and in `natter --help`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Chat with natterd from a terminal.
#[derive(Debug, Parser)]
#[command(name = "natter", version, about, max_term_width = 100)]
pub(crate) struct Cli {
    /// natterd's HTTP side-port, e.g. http://127.0.0.1:7180 (default: the server of the
    /// last login in this profile, else http://127.0.0.1:7180)
    #[arg(long, global = true, env = "NATTER_SERVER", value_name = "URL")]
    pub(crate) server: Option<String>,
    /// The profile directory holding the session token and device id (default:
    /// $XDG_CONFIG_HOME/natter or ~/.config/natter)
    #[arg(long, global = true, env = "NATTER_PROFILE", value_name = "DIR")]
    pub(crate) profile: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create an account and log in as this profile's device
    Signup {
        /// Username: 3-32 characters of a-z 0-9 _ . -
        name: String,
        /// Password (8-1024 bytes); else $NATTER_PASSWORD, else a prompt
        #[arg(long, env = "NATTER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Log in and keep the token in the profile (file mode 0600)
    Login {
        /// Username
        name: String,
        /// Password; else $NATTER_PASSWORD, else a prompt
        #[arg(long, env = "NATTER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Revoke this profile's token and forget it
    Logout,
    /// List friends with presence and last seen, and pending requests
    Friends {
        /// add, accept or remove a friend
        #[command(subcommand)]
        action: Option<FriendsAction>,
    },
    /// Open (or show) the direct chat with a friend
    Dm {
        /// The friend's username
        name: String,
    },
    /// Create groups and change their members
    Group {
        /// create, add or remove
        #[command(subcommand)]
        action: GroupAction,
    },
    /// List your chats with unread counts
    Chats,
    /// Send a message (TEXT `-` reads it from stdin)
    Send {
        /// A friend's username, a group's name, or #ID
        chat: String,
        /// The text; several words are joined with spaces; `-` reads stdin
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true, trailing_var_arg = true)]
        text: Vec<String>,
    },
    /// Print a chat's recent messages, oldest first, and mark them read
    History {
        /// A friend's username, a group's name, or #ID
        chat: String,
        /// How many messages, counted from the newest (at most 10,000: 50 pages, what
        /// natterd serves in one burst)
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// Search your messages: every word must match (accents and case ignored); newest first
    Search {
        /// The words to find; several are joined with spaces; "quotes" match a phrase
        #[arg(required = true, num_args = 1..)]
        query: Vec<String>,
        /// Only this chat: a friend's username, a group's name, or #ID
        #[arg(long)]
        chat: Option<String>,
        /// Most hits
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: u32,
        /// Best matches first instead of newest first
        #[arg(long)]
        relevance: bool,
    },
    /// Sync, then print arriving messages and presence changes until interrupted
    Tail,
    /// Talk in a chat: type lines to send them, see the conversation live; Ctrl-D ends
    Chat {
        /// A friend's username, a group's name, or #ID
        chat: String,
        /// How many earlier messages to show first
        #[arg(long, default_value_t = 20)]
        last: u64,
    },
}

/// `natter friends …`.
#[derive(Debug, Subcommand)]
pub(crate) enum FriendsAction {
    /// Ask someone to be your friend (accepts their request if they asked you)
    Add {
        /// Their username
        name: String,
    },
    /// Accept a friend request
    Accept {
        /// The username who asked
        name: String,
    },
    /// Unfriend, decline a request, or withdraw yours
    Remove {
        /// The username
        name: String,
    },
}

/// `natter group …`.
#[derive(Debug, Subcommand)]
pub(crate) enum GroupAction {
    /// Create a group with friends (you are its owner)
    Create {
        /// The group's name (1-64 characters)
        name: String,
        /// Friends to add
        members: Vec<String>,
    },
    /// Add a friend to a group you own
    Add {
        /// The group's name or #ID
        group: String,
        /// The friend's username
        name: String,
    },
    /// Remove a member (the owner removes anyone; anyone removes themself = leave)
    Remove {
        /// The group's name or #ID
        group: String,
        /// The member's username
        name: String,
    },
}
