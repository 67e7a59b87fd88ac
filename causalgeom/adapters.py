from .errors import DumpImportError
def import_dump(*a, **k):
    raise DumpImportError('todo')
