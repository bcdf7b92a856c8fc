"""The one error type the score modules raise for problems the user can fix."""


class ScoreError(ValueError):
  """An unknown score name, or a score file that is missing, mis-sized or contains NaN.

  The message is one line: what is wrong, then what would fix it.
  """
