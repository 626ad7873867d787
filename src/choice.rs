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

/// Implements [`Choice`] from one list of `Variant => "name", "help";` lines, so the values,
/// their names and their help cannot drift apart.
macro_rules! choices {
    ($ty:ident { $($variant:ident => $name:literal, $help:literal;)+ }) => {
        impl $crate::choice::Choice for $ty {
            const CHOICES: &'static [$ty] = &[$($ty::$variant),+];

            fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }

            fn help(self) -> &'static str {
                match self {
                    $($ty::$variant => $help),+
                }
            }
        }
    };
}
pub(crate) use choices;

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

    /// Reports and model files name a value through serde: the same name as on the command line.
    fn serialised_as_named<T: Choice + serde::Serialize>() {
        for &c in T::CHOICES {
            assert_eq!(serde_json::to_value(c).unwrap(), serde_json::json!(c.name()));
        }
    }

    #[test]
    fn every_choice_has_one_name_that_finds_it() {
        serialised_as_named::<crate::defense::Method>();
        serialised_as_named::<crate::train::OptimizerKind>();
        serialised_as_named::<crate::reproduce::Task>();
        named_once_and_found::<crate::defense::Method>();
        named_once_and_found::<crate::train::OptimizerKind>();
        named_once_and_found::<crate::reproduce::Task>();
        named_once_and_found::<crate::data::Layout>();
    }
}
