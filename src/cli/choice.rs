//! clap's view of the library's [`Choice`] types: their names as possible values, with help,
//! checked by clap like any value enum.

use std::marker::PhantomData;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use fineprune::choice::Choice;

/// Parses a [`Choice`] by name.
#[derive(Clone)]
pub(super) struct ChoiceParser<T>(PhantomData<T>);

impl<T: Choice> ChoiceParser<T> {
    pub(super) fn new() -> Self {
        ChoiceParser(PhantomData)
    }

    fn values() -> impl Iterator<Item = PossibleValue> {
        T::CHOICES.iter().map(|c| PossibleValue::new(c.name()).help(c.help()))
    }
}

impl<T: Choice> TypedValueParser for ChoiceParser<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &std::ffi::OsStr) -> Result<T, clap::Error> {
        // clap's own parser makes the error (possible values, suggestions); the name is then
        // one of ours.
        let name = PossibleValuesParser::new(Self::values()).parse_ref(cmd, arg, value)?;
        Ok(T::from_name(&name).expect("clap accepted one of the possible values"))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(Self::values()))
    }
}
