"""The one exception the data layer raises for problems a user can fix."""


class DataError(Exception):
    """A dataset problem stated for a person: which file or folder, what is wrong, what to do.

    Entry points print the message instead of a traceback.
    """
