"""tools/demo.py on videos: every frame in order into a video of the input's fps and size; a
truncated file ends cleanly with the frames decoded so far written."""
from helpers import config_file, load_tool, video_info, write_video

CONFIG = config_file("quickstart_semseg.yaml")


def run_demo(tmp_path, video, output):
    demo = load_tool("demo")
    return demo.main(["--config-file", CONFIG, "--video-input", str(video), "--output",
                      str(output), "--opts", "MODEL.DEVICE", "cpu", "DATASETS.SYNTHETIC.ROOT",
                      str(tmp_path / "data")])


def test_video_demo_keeps_frame_count_fps_and_size(tmp_path):
    video = tmp_path / "clip.mp4"
    write_video(str(video), num_frames=9, size=(80, 64), fps=7.0)
    assert video_info(str(video)) == (9, 7.0, 80, 64)
    output = tmp_path / "drawn.mp4"
    assert run_demo(tmp_path, video, output) == 0
    assert video_info(str(output)) == (9, 7.0, 80, 64)


def test_truncated_video_ends_cleanly_keeping_written_frames(tmp_path):
    video = tmp_path / "clip.avi"
    write_video(str(video), num_frames=12)
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 3 // 4])
    decodable = video_info(str(cut))[0]
    assert 0 < decodable < 12
    output = tmp_path / "cut_drawn.avi"
    assert run_demo(tmp_path, cut, output) == 0
    assert video_info(str(output))[0] == decodable
