//! Group membership on the chat's owner core: adds and removals decided in
//! order with the group's messages (a removed member gets nothing sent after
//! its removal), made durable through the writer, answered once committed; and
//! the owner hand-over when a group's owner leaves.

use std::time::Instant;

use super::{Action, ChatKind, Core, MAX_GROUP_MEMBERS, ReadError, WriteOp};
use crate::ids::{ChatId, UserId};

/// A group membership change requested over HTTP, decided by the chat's owner core.
#[derive(Debug)]
pub struct MembershipChange {
    /// The group.
    pub chat: ChatId,
    /// Who asks (the owner adds or removes; any member may remove itself).
    pub actor: UserId,
    /// Who is added or removed.
    pub user: UserId,
    /// Add (true) or remove (false).
    pub add: bool,
}

/// The driver's name for the requester of one membership change: echoed in
/// [`Action::MembershipReply`] so the driver knows whom to tell. The core never
/// looks inside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplyTicket(pub u64);

/// Why a membership change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// No such chat.
    #[error("no such chat")]
    UnknownChat,
    /// The chat is a direct chat, whose members never change.
    #[error("direct chats have fixed members")]
    NotAGroup,
    /// Only the group's owner adds members or removes others.
    #[error("only the group's owner may do that")]
    NotOwner,
    /// A member added must be a friend of the owner.
    #[error("that user is not a friend of the group's owner")]
    NotFriends,
    /// The group already has the maximum number of members.
    #[error("a group has at most {} members", super::MAX_GROUP_MEMBERS)]
    TooManyMembers,
    /// The user is already a member.
    #[error("already a member")]
    AlreadyMember,
    /// The user is not a member.
    #[error("not a member")]
    NotMember,
    /// The store failed; nothing changed.
    #[error("{0}")]
    Store(ReadError),
}

impl Core {
    /// A membership change for a group this core owns: decided here, in order
    /// with the group's messages, then made durable through the writer.
    pub fn handle_membership(&mut self, change: MembershipChange, reply: ReplyTicket, _now: Instant) {
        let MembershipChange {
            chat,
            actor,
            user,
            add,
        } = change;
        let result = self.apply_membership(chat, actor, user, add);
        match result {
            Ok(new_owner) => {
                self.next_ticket += 1;
                let ticket = self.next_ticket;
                self.memberships.insert(ticket, (chat, reply));
                if let Some(state) = self.chats.get_mut(&chat) {
                    state.memberships_in_flight += 1;
                }
                self.actions.push_back(Action::Write(WriteOp::Membership {
                    origin: self.config.core,
                    chat,
                    user,
                    add,
                    new_owner,
                    ticket,
                }));
            }
            Err(e) => self.actions.push_back(Action::MembershipReply {
                reply,
                result: Err(e),
            }),
        }
    }

    /// Decides and applies one membership change in memory. Returns the new
    /// owner when the change is the owner leaving: the longest-standing
    /// remaining member (earliest committed `member_since`, ties to the lowest
    /// id; a member whose add is not committed yet joined last), or `None` when
    /// nobody remains — an empty group that nobody can reach.
    fn apply_membership(
        &mut self,
        chat_id: ChatId,
        actor: UserId,
        user: UserId,
        add: bool,
    ) -> Result<Option<UserId>, MembershipError> {
        let cores = self.config.cores;
        let store = self.store.clone();
        let chat = match self.load_chat(chat_id) {
            Ok(Some(chat)) => chat,
            Ok(None) => return Err(MembershipError::UnknownChat),
            Err(e) => return Err(MembershipError::Store(e)),
        };
        if chat.kind != ChatKind::Group {
            return Err(MembershipError::NotAGroup);
        }
        if !chat.members.contains(&actor) {
            return Err(MembershipError::UnknownChat);
        }
        let mut new_owner = None;
        if add {
            if actor != chat.owner {
                return Err(MembershipError::NotOwner);
            }
            if chat.members.contains(&user) {
                return Err(MembershipError::AlreadyMember);
            }
            if chat.members.len() >= MAX_GROUP_MEMBERS {
                return Err(MembershipError::TooManyMembers);
            }
            match store.are_friends(chat.owner, user) {
                Ok(true) => {}
                Ok(false) => return Err(MembershipError::NotFriends),
                Err(e) => return Err(MembershipError::Store(e)),
            }
            chat.members.insert(user);
        } else {
            if actor != chat.owner && actor != user {
                return Err(MembershipError::NotOwner);
            }
            if !chat.members.contains(&user) {
                return Err(MembershipError::NotMember);
            }
            if user == chat.owner {
                let mut next: Option<(u64, UserId)> = None;
                for &member in chat.members.iter().filter(|m| **m != user) {
                    let since = store
                        .member_since(chat_id, member)
                        .map_err(MembershipError::Store)?
                        .unwrap_or(u64::MAX);
                    if next.is_none_or(|best| (since, member) < best) {
                        next = Some((since, member));
                    }
                }
                new_owner = next.map(|(_, member)| member);
            }
            chat.members.remove(&user);
            if let Some(owner) = new_owner {
                chat.owner = owner;
            }
        }
        chat.rebuild_recipients(cores);
        Ok(new_owner)
    }
}
