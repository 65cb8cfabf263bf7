//! Short names for every entity, for `use entity::prelude::*`.

pub use super::conversation::Entity as Conversation;
pub use super::message::Entity as Message;
pub use super::setting::Entity as Setting;
pub use super::user::Entity as User;
