"""Teacher kinds (teachers/kinds.py): the analytic mixture denoiser, platform networks (checkpoint, mlflow) and
networks trained elsewhere (diffusers, torchscript, state_dict); importing this package registers them."""

from multistep.teachers import analytic, imported, network  # noqa: F401  (registration)
from multistep.teachers.kinds import TEACHER_KINDS, TeacherKind, register, teacher_kind

__all__ = ["TEACHER_KINDS", "TeacherKind", "register", "teacher_kind"]
