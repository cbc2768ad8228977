"""The page `xlm generate --trace-html` writes, in a real headless browser: it opens on step 0 (the
prompt), its play button steps through the sampler's steps, and a legend explains the highlight."""

import shutil

import pytest

from xlm.data.tasks.star import load_star
from xlm.recipes import generate

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(BROWSER is None or DRIVER is None,
                                reason="no headless browser: needs chromium and chromedriver on PATH "
                                       "(Debian: apt-get install chromium chromium-driver)")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_opens_on_step_0_plays_and_explains_its_highlight(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    prompt = load_star("star_easy", "test")[0]["prompt"]
    page = tmp_path / "pages" / "trace.html"  # its folder is made, as --output's is for xlm eval
    assert generate.main(["--model", "mdlm_star_easy", "--prompt", prompt, "--num-samples", "2",
                          "--trace-html", str(page), "sampler.num_steps=4"]) == 0
    browser.get(page.as_uri())

    samples = browser.find_elements(By.CSS_SELECTOR, ".sample")
    assert len(samples) == 2
    for sample in samples:
        label = sample.find_element(By.CSS_SELECTOR, ".step-label").text
        assert label.startswith("step 0 of ") and label.endswith("(the prompt)"), label
        assert sample.find_element(By.CSS_SELECTOR, ".slider").get_attribute("value") == "0"
        tokens = [t.text for t in sample.find_elements(By.CSS_SELECTOR, ".tokens .tok")]
        assert tokens == prompt.split()
        assert not sample.find_elements(By.CSS_SELECTOR, ".tokens .new")
    last = int(samples[0].find_element(By.CSS_SELECTOR, ".slider").get_attribute("max"))
    assert last >= 1

    legend = browser.find_element(By.CSS_SELECTOR, ".legend")
    assert "written in this step" in legend.text and legend.find_elements(By.CSS_SELECTOR, ".tok.new")

    first = samples[0]
    play = first.find_element(By.CSS_SELECTOR, "button.play")
    assert play.text == "Play"
    play.click()
    label = first.find_element(By.CSS_SELECTOR, ".step-label")
    WebDriverWait(browser, 20, poll_frequency=0.05).until(lambda _: label.text.startswith("step 1 of "))
    assert label.text == f"step 1 of {last}"
    assert first.find_elements(By.CSS_SELECTOR, ".tokens .new")  # step 1 wrote something, highlighted
    WebDriverWait(browser, 20, poll_frequency=0.05).until(lambda _: label.text == f"step {last} of {last}")
    assert play.text == "Play"  # stopped at the last step
    assert samples[1].find_element(By.CSS_SELECTOR, ".step-label").text.startswith("step 0 of ")  # on its own
    play.click()  # from the last step, play starts over
    WebDriverWait(browser, 20, poll_frequency=0.05).until(lambda _: play.text == "Pause")
    play.click()
    assert play.text == "Play"
