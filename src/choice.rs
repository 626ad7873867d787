//! Choices a user names (a defense method, an optimiser, a task, an array layout): each type
//! lists its values with their names and one-line help, so the command line can offer and
//! check them without the library depending on a command-line crate.

/// A closed set of named values.
pub trait Choice: Copy + Send + Sync + 'static {
    /// Every value, in the order help lists them.
    const CHOICES: &'static [Self];
    /// The name on the command line and in reports.
    fn name(self) -> &'static str;
    /// One line for `--help`.
    fn help(self) -> &'static str;

    /// The value of that name, if any.
    fn from_name(name: &str) -> Option<Self> {
        Self::CHOICES.iter().copied().find(|c| c.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::Choice;

    fn named_once_and_found<T: Choice + PartialEq + std::fmt::Debug>() {
        for &c in T::CHOICES {
            assert_eq!(T::from_name(c.name()), Some(c));
            assert!(!c.help().is_empty(), "{c:?} has no help");
        }
        let mut names: Vec<_> = T::CHOICES.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), T::CHOICES.len(), "a name is used twice");
        assert_eq!(T::from_name("no-such-choice"), None);
    }

    #[test]
    fn every_choice_has_one_name_that_finds_it() {
        named_once_and_found::<crate::defense::Method>();
        named_once_and_found::<crate::train::OptimizerKind>();
        named_once_and_found::<crate::reproduce::Task>();
        named_once_and_found::<crate::data::Layout>();
    }
}
