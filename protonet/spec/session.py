"""One run of a NetSpec script under `protonet gen`: what it wrote, what it lacks, what it
tried to launch. `protonet gen` makes one GenSession per script and hands it to whatever
records into it: the script's `open`, the held-back launches, `caffe.model_libs.check_if_exist`
(protonet.compat) and protonet.spec.jobs (through `jobs.recording(session)`)."""
import os


class GenSession:
    def __init__(self, script=None, root=None, flavor=None):
        self.script = script
        self.root = root
        self.flavor = flavor
        self.written = []       # absolute paths the script wrote, first write first, each once
        self.job_scripts = []   # absolute paths of job scripts written through protonet.spec.jobs
        self.missing = []       # inputs found missing (check_if_exist, jobs.check_inputs), each once
        self.launches = []      # commands that would have started a job, held back

    def note_written(self, path):
        path = os.path.abspath(os.fsdecode(path))
        if path not in self.written:
            self.written.append(path)

    def note_job_script(self, path):
        self.note_written(path)
        path = os.path.abspath(os.fsdecode(path))
        if path not in self.job_scripts:
            self.job_scripts.append(path)

    def note_missing(self, path):
        if path not in self.missing:
            self.missing.append(path)

    def note_launch(self, command):
        self.launches.append(command)

    def wrote(self, path):
        """True when `path` is a file the script wrote (a job it may try to start)."""
        return os.path.abspath(path) in self.written

    def pending_jobs(self):
        """The commands `--run` starts: the held launches, then job scripts no launch started."""
        commands = list(self.launches)
        for job in self.job_scripts:
            if not any(os.path.abspath(os.path.join(self.root, c)) == job for c in commands):
                commands.append(job)
        return commands
