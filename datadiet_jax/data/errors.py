"""The one error type the data sources raise for problems the user can fix."""


class DataError(ValueError):
  """A data set is missing, malformed or not prepared.

  The message is one line: what is wrong, then how to fix it.
  """
