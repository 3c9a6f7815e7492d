"""Errors that reach the operator as one line (never a traceback), with their exit codes."""

EX_CONFIG = 78  # sysexits EX_CONFIG: systemd's RestartPreventExitStatus= stops a restart loop on it


class CliError(Exception):
    """A one-line error for the operator; exit code attached."""

    def __init__(self, msg: str, code: int = 1):
        super().__init__(msg)
        self.code = code


class ConfigError(CliError):
    """A config that cannot be used: one line naming the key; exit 78 from any command."""

    def __init__(self, msg: str):
        super().__init__(msg, EX_CONFIG)
